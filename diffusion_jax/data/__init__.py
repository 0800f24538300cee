"""Datasets and the input pipeline.

`builders.load_builder(name)` returns a prepared TFDS builder: the embedded
datasets (`shapes_tfds.Shapes`, `digits.Digits`) need no download and no
TensorFlow and are prepared on first use; other names are public TFDS
datasets prepared beforehand. Import the submodules you need; this package
imports nothing heavy.
"""

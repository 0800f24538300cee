"""Text: GLIDE's GPT-2 BPE and the noised CLIP's BPE (`tokenizer.py`)."""

"""Training, fine-tuning and evaluation."""

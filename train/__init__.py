"""Training stage: Brevitas binary AlexNets, fine-tuning and evaluation (python -m train)."""

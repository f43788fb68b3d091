"""Text prompts: open-vocabulary detectors turn phrases into boxes, SAM 2 turns boxes into masks."""

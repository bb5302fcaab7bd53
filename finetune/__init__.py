"""Fine-tuning: heads, the SequenceClassifier, soft prompts, in-context evaluation, probes and the suite runner."""

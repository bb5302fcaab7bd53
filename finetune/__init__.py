"""Fine-tuning: heads, the SequenceClassifier, probes and the benchmark suite runner."""

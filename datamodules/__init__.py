"""LightningDataModules and their Datasets, one file per data family (genome, protein, smiles, benchmarks)."""

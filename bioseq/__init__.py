"""bioseq: long-range biological sequence foundation models (HyenaDNA, Mamba/Caduceus, Bio-xLSTM).

The core package holds tokenizers, FASTA I/O, fused ops, checkpoint conversion and the embedding
engine. It never imports Lightning or the sibling packages (``datamodules``, ``models``,
``finetune``); only the wiring layer (``bioseq.cli`` and ``bioseq.commands``) does.
"""

__version__ = "0.1.0"

"""The shipped LightningCLI configs (``pretrain/*.yaml``, ``finetune/<suite>/*.yaml``), as package data.

Installed as ``bioseq.configs``; ``bioseq.config_files`` finds them by name.
"""

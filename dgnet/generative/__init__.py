"""The generative side: ``figures`` (the paper's image figures), ``dataset`` (generated training sets),
``disentanglement`` (how well appearance and structure are separated)."""

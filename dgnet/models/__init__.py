"""DG-Net modules: Ea, Es, the decoder G, the discriminator D, re-id heads, and DGNet composing them."""

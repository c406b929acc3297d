"""DG-Net modules: Ea, Es, the decoder G, the discriminator D, re-id heads, and DGNet composing them."""

from dgnet.models.appearance import AppearanceEncoder, ClassBlock
from dgnet.models.baseline import ReidBaseline
from dgnet.models.decoder import Decoder
from dgnet.models.dgnet import DGNet, eval_mode, frozen
from dgnet.models.discriminator import MultiScaleDiscriminator
from dgnet.models.structure import StructureEncoder, gray
from dgnet.models.weights import BACKBONES, Backbone, build_backbone

__all__ = [
    "BACKBONES",
    "AppearanceEncoder",
    "Backbone",
    "ClassBlock",
    "DGNet",
    "Decoder",
    "MultiScaleDiscriminator",
    "ReidBaseline",
    "StructureEncoder",
    "build_backbone",
    "eval_mode",
    "frozen",
    "gray",
]

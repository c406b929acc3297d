"""Configuration: small per-component dataclasses, presets, YAML and command-line overrides.

Every number of the DG-Net spec (``../shared/dgnet-spec.md``) lives here once. The reference's
names are kept (``gan_w``, ``recon_x_w``, ...) so users of the reference find them.
Presets are functions returning a fresh ``Config``; YAML files override a preset, flags
override both (the layering lives in ``dgnet.train``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # market1501 | dukemtmc | msmt17 | folder | synthetic
    root: str = "data/synthetic"  # the embedded set is generated here when absent
    height: int = 256
    width: int = 128
    batch_size: int = 8  # per stream (a and b)
    loader: str = "auto"  # dali | torch | auto (dali where it imports)
    workers: int = 2
    pad: int = 10
    erasing_p: float = 0.5
    skip_corrupt: bool = False


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # Ea's trunk; the demo preset may use a lighter one
    backbone_weights: str = "imagenet"  # imagenet | none | PATH
    num_ids: int = 751  # train identities; checked against the dataset
    app_pool_h: int = 4  # appearance code: adaptive max-pool to (4, 1) of 2048 channels
    head_dim: int = 512
    dropout_primary: float = 0.5
    dropout_fine: float = 0.75
    structure_dim: int = 128  # Es output channels
    decoder_res_blocks: int = 4
    mlp_dim: int = 512
    dis_dim: int = 32
    dis_scales: int = 3
    dis_res_blocks: int = 4
    # Deliberate-deviation switches; the defaults are parity with the reference.
    detach_appearance_code: bool = True  # reference detaches f inside Ea
    bn_train_on_generated: bool = True  # reference keeps teacher/Ea-copy BN in train mode on fakes


@dataclass
class LossConfig:
    gan_w: float = 1.0
    recon_x_w: float = 5.0
    recon_xp_w: float = 5.0
    recon_s_w: float = 1.0  # ramp cap
    recon_f_w: float = 1.0  # ramp cap
    recon_x_cyc_w: float = 2.0  # ramp cap
    id_w: float = 1.0
    pid_w: float = 1.0
    recon_id_w: float = 0.5
    teacher_w: float = 2.0  # ramp cap
    B_w: float = 0.2  # fine-grained weight relative to teacher_w
    warm_iter: int = 30_000  # ramps start here
    warm_step: float = 0.0005  # per iteration, up to each cap
    r1_w: float = 0.01  # R1 penalty in the D step
    structure_live_p: float = 0.5  # p that the live Es sees the detached x_ab


@dataclass
class OptimConfig:
    gen_lr: float = 1e-4  # G (Es, decoder, MLPs) and D: Adam
    dis_lr: float = 1e-4
    adam_betas: tuple[float, float] = (0.0, 0.999)
    weight_decay: float = 5e-4
    id_lr_backbone: float = 0.002  # Ea: SGD, Nesterov momentum
    id_lr_heads: float = 0.02
    momentum: float = 0.9
    milestones: tuple[int, ...] = (60_000, 90_000, 105_000)
    gamma: float = 0.1
    iterations: int = 100_000
    # Stage 1: the re-id baseline / teacher.
    teacher_iterations: int = 20_000
    teacher_lr_backbone: float = 0.01
    teacher_lr_heads: float = 0.1
    teacher_milestones: tuple[int, ...] = (14_000,)


@dataclass
class TrainConfig:
    device: str = "auto"  # cpu | cuda | auto
    amp: str = "auto"  # bf16 | fp16 | off | auto (bf16 where supported on GPU, off on CPU)
    fused: bool = False
    seed: int = 0
    deterministic: bool = False
    log_every: int = 20
    image_every: int = 1000
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    output: str = "outputs/run"


@dataclass
class EvalConfig:
    alpha: float = 0.5  # weight of the fine-grained half of the feature
    rerank: bool = True
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    batch_size: int = 64


@dataclass
class Config:
    name: str = "market1501"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

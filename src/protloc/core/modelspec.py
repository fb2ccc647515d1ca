"""What a trained network is, as plain data: :class:`ModelSpec` (saved as ``RUN/model.json``).

Pure (no torch), so the run-folder contract (:mod:`protloc.core.runfolder`) can read it;
:func:`protloc.models.network.build_model` turns a spec into a network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a protloc network.

    Examples
    --------
    >>> s = ModelSpec("test_resnet", in_chans=4, num_classes=10)
    >>> ModelSpec.from_dict(s.to_dict()) == s
    True
    """

    backbone: str = "tf_efficientnet_lite0"
    in_chans: int = 3
    num_classes: int = 10
    pool: str = "avg"          # avg | max | avgmax | catavgmax
    dropout: float = 0.2
    hidden: int = 0            # 0 = linear head; >0 = Linear-ReLU-Dropout-Linear
    drop_path: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

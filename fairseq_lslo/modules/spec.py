"""The complete LSLo configuration of a model: languages, ranks, positions and routing.

It is parsed once from the command line, checked, and stored in every checkpoint (as the
``lslo_config`` buffer), so a checkpoint describes its own adapters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import List, Mapping

import torch

from ..languages import LanguageInventory, LSLoConfigError, dumps_config, parse_ranks
from .lslo_linear import LowRankBank
from .placement import default_routing, parse_positions, parse_routing

CONFIG_VERSION = 1
#: the model buffer (and state-dict key) that holds the configuration
CONFIG_KEY = "lslo_config"


@dataclass
class SideSpec:
    positions: List[str]
    routing: List[str]  # one route per layer


@dataclass
class LSLoSpec:
    languages: List[List[str]]  # [[code, group], ...] in adapter order
    ranks: List[int]  # per language
    alpha: float
    shared_rank: int
    encoder: SideSpec
    decoder: SideSpec
    version: int = CONFIG_VERSION

    # --- construction -----------------------------------------------------------------
    @classmethod
    def from_args(cls, args, encoder_layers: int, decoder_layers: int) -> "LSLoSpec":
        inventory = LanguageInventory.from_spec(getattr(args, "lslo_langs", None))
        ranks = parse_ranks(getattr(args, "lslo_rank", "2"), inventory)
        alpha = float(getattr(args, "lslo_alpha", 1.0))
        if alpha <= 0:
            raise LSLoConfigError(f"--lslo-alpha must be positive, got {alpha}")
        shared_rank = getattr(args, "lslo_shared_rank", None)
        shared_rank = sum(ranks) if shared_rank in (None, 0, "") else int(shared_rank)
        if shared_rank <= 0:
            raise LSLoConfigError(f"--lslo-shared-rank must be a positive integer, got {shared_rank}")
        sides = {}
        for side, n in (("encoder", encoder_layers), ("decoder", decoder_layers)):
            routing_spec = getattr(args, f"lslo_{side}_routing", None) or "auto"
            if routing_spec == "auto":
                routing_spec = default_routing(n, side)
            sides[side] = SideSpec(
                parse_positions(getattr(args, f"lslo_{side}_positions", "fc1,fc2"), side),
                parse_routing(routing_spec, n, side),
            )
        return cls(inventory.to_json(), ranks, alpha, shared_rank, sides["encoder"], sides["decoder"])

    @property
    def inventory(self) -> LanguageInventory:
        return LanguageInventory([tuple(x) for x in self.languages])

    @property
    def codes(self) -> List[str]:
        return [code for code, _ in self.languages]

    def routes_used(self) -> set:
        return {
            route
            for side in (self.encoder, self.decoder)
            if side.positions
            for route in side.routing
            if route != "none"
        }

    @property
    def needs_src(self) -> bool:
        return bool(self.routes_used() & {"src", "learn"})

    @property
    def needs_tgt(self) -> bool:
        return bool(self.routes_used() & {"tgt", "learn"})

    def build_bank(self, kind: str, in_features: int, out_features: int) -> LowRankBank:
        """A language bank (src/tgt kind) or the single shared adapter."""
        ranks = [self.shared_rank] if kind == "shared" else self.ranks
        return LowRankBank(in_features, out_features, ranks, self.alpha)

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "languages": self.languages,
            "ranks": self.ranks,
            "alpha": self.alpha,
            "shared_rank": self.shared_rank,
            "encoder": {"positions": self.encoder.positions, "routing": self.encoder.routing},
            "decoder": {"positions": self.decoder.positions, "routing": self.decoder.routing},
        }

    @classmethod
    def from_dict(cls, d: dict) -> "LSLoSpec":
        return cls(
            languages=[list(x) for x in d["languages"]],
            ranks=list(d["ranks"]),
            alpha=float(d["alpha"]),
            shared_rank=int(d["shared_rank"]),
            encoder=SideSpec(list(d["encoder"]["positions"]), list(d["encoder"]["routing"])),
            decoder=SideSpec(list(d["decoder"]["positions"]), list(d["decoder"]["routing"])),
            version=int(d.get("version", CONFIG_VERSION)),
        )

    def to_tensor(self) -> torch.Tensor:
        """The configuration as a uint8 tensor (JSON bytes), stored as a model buffer."""
        return torch.tensor(list(dumps_config(self.to_dict()).encode("utf-8")), dtype=torch.uint8)

    @classmethod
    def from_tensor(cls, t: torch.Tensor) -> "LSLoSpec":
        return cls.from_dict(json.loads(bytes(t.cpu().tolist()).decode("utf-8")))

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], where: str) -> "LSLoSpec":
        """The configuration stored in a model state dict; ``where`` (a path) names it in the error."""
        if CONFIG_KEY not in state:
            raise LSLoConfigError(
                f"{where}: not an LSLo checkpoint (no {CONFIG_KEY} in the model state; was it trained with "
                "--user-dir fairseq_lslo --arch lslo_*?)"
            )
        return cls.from_tensor(state[CONFIG_KEY])

    def differences(self, other: "LSLoSpec") -> List[str]:
        """Human-readable list of what differs (empty when equal)."""
        a, b = self.to_dict(), other.to_dict()
        out = []
        for key in ("languages", "ranks", "alpha", "shared_rank"):
            if a[key] != b[key]:
                out.append(f"{key}: {a[key]} vs {b[key]}")
        for side in ("encoder", "decoder"):
            for key in ("positions", "routing"):
                if a[side][key] != b[side][key]:
                    out.append(f"{side} {key}: {a[side][key]} vs {b[side][key]}")
        return out

"""The complete LSLo configuration of a model: languages, ranks, positions and routing.

It is parsed once from the command line, checked, and stored in every checkpoint (as the
``lslo_config`` buffer), so a checkpoint describes its own adapters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from ..errors import LSLoConfigError
from ..languages import LanguageInventory, dumps_config, parse_ranks
from .keys import bucket_owners
from .lslo_linear import INITS, SCALINGS, LowRankBank, Span
from .placement import default_routing, parse_positions, parse_routing

#: 2: adds ffn_coverage, ffn_slice_offset, init and scaling (version 1 configs had none: they
#: read as full coverage, init linear, scaling alpha, the only parameterisation of version 1)
CONFIG_VERSION = 2
#: a configuration with per-bank ranks (``bank_ranks``: a rank-pruned, compacted model) is written
#: as version 3, so that a version that cannot build such banks refuses it instead of misreading it
BANK_RANKS_VERSION = 3
#: the model buffer (and state-dict key) that holds the configuration
CONFIG_KEY = "lslo_config"

#: fc1/fc2 adapters: ``full`` cover the whole FFN width (d_model -> d_ffn and d_ffn -> d_model);
#: ``slice`` are square (d_model -> d_model) on FFN hidden units [s, s + d_model), the reference's
FFN_COVERAGES = ("full", "slice")
FFN_POSITIONS = ("fc1", "fc2")
#: the parameterisation choices a preset sets: argparse destination -> (spec field, choices)
PARAMETERISATION: Dict[str, Tuple[str, tuple]] = {
    "lslo_ffn_coverage": ("ffn_coverage", FFN_COVERAGES),
    "lslo_init": ("init", INITS),
    "lslo_scaling": ("scaling", SCALINGS),
}
#: ``--lslo-preset``: ``ours`` (the default) and ``paper``, the authors' reference implementation
PRESETS: Dict[str, Dict[str, str]] = {
    "ours": {"lslo_ffn_coverage": "full", "lslo_init": "linear", "lslo_scaling": "alpha"},
    "paper": {"lslo_ffn_coverage": "slice", "lslo_init": "rank", "lslo_scaling": "none"},
}
DEFAULT_PRESET = "ours"
#: what a configuration without these keys (version 1) means
_LEGACY = {"ffn_coverage": "full", "ffn_slice_offset": 0, "init": "linear", "scaling": "alpha"}


def resolved_parameterisation(args) -> Dict[str, str]:
    """{argparse destination: value} of the parameterisation flags: those given on the command
    line win, ``--lslo-preset`` (default ``ours``) fills the rest."""
    preset = getattr(args, "lslo_preset", None) or DEFAULT_PRESET
    if preset not in PRESETS:
        raise LSLoConfigError(f"--lslo-preset: unknown preset {preset!r}; expected one of {', '.join(PRESETS)}")
    chosen = dict(PRESETS[preset])
    chosen.update({dest: getattr(args, dest) for dest in PARAMETERISATION if getattr(args, dest, None) not in (None, "")})
    return chosen


def resolve_preset(args) -> None:
    """Write the resolved parameterisation into ``args`` (so the run's stored args show it too)."""
    for dest, value in resolved_parameterisation(args).items():
        setattr(args, dest, value)
    args.lslo_preset = getattr(args, "lslo_preset", None) or DEFAULT_PRESET
    if getattr(args, "lslo_ffn_slice_offset", None) is None:
        args.lslo_ffn_slice_offset = 0


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
    ffn_coverage: str = "full"
    ffn_slice_offset: int = 0
    init: str = "linear"
    scaling: str = "alpha"
    version: int = CONFIG_VERSION
    #: bank path (``encoder.layers.0.fc1.lslo_src``) -> rank of each slot there, where it differs from
    #: ``ranks`` / ``shared_rank``: the ranks rank pruning kept (0: none), written by compaction
    bank_ranks: Dict[str, List[int]] = field(default_factory=dict)

    def __post_init__(self):
        for flag_dest, (name, choices) in PARAMETERISATION.items():
            if getattr(self, name) not in choices:
                flag = "--" + flag_dest.replace("_", "-")
                raise LSLoConfigError(f"{flag}: expected one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if int(self.ffn_slice_offset) < 0:
            raise LSLoConfigError(f"--lslo-ffn-slice-offset must be >= 0, got {self.ffn_slice_offset}")
        if self.ffn_coverage == "full" and int(self.ffn_slice_offset) != 0:
            raise LSLoConfigError(
                f"--lslo-ffn-slice-offset {self.ffn_slice_offset} needs --lslo-ffn-coverage slice "
                "(full-width fc1/fc2 adapters have no slice)"
            )
        if int(self.version) > BANK_RANKS_VERSION:
            raise LSLoConfigError(
                f"LSLo configuration version {self.version} is newer than this fairseq-lslo reads "
                f"({BANK_RANKS_VERSION}); upgrade fairseq-lslo"
            )

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
        chosen = resolved_parameterisation(args)
        offset = getattr(args, "lslo_ffn_slice_offset", None)
        # not a flag: set from an adapter file written from a rank-pruned model (fill_args_from_adapters)
        bank_ranks = json.loads(getattr(args, "lslo_bank_ranks", None) or "{}")
        return cls(inventory.to_json(), ranks, alpha, shared_rank, sides["encoder"], sides["decoder"],
                   ffn_coverage=chosen["lslo_ffn_coverage"], ffn_slice_offset=int(offset or 0),
                   init=chosen["lslo_init"], scaling=chosen["lslo_scaling"], bank_ranks=bank_ranks)

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

    def spans(self, position: Optional[str], in_features: int, out_features: int) -> Tuple[Span, Span]:
        """(input span, output span) an adapter at ``position`` covers in its host linear map.

        Full coverage (or a position other than fc1/fc2, or ``position`` None): the whole map.
        Slice coverage: fc1 (d_model -> d_ffn) writes hidden units [s, s + d_model); fc2
        (d_ffn -> d_model) reads them; ``s`` is ``ffn_slice_offset``.
        """
        full_in, full_out = (0, in_features), (0, out_features)
        if self.ffn_coverage == "full" or position not in FFN_POSITIONS:
            return full_in, full_out
        s = int(self.ffn_slice_offset)
        d_model, d_ffn = (in_features, out_features) if position == "fc1" else (out_features, in_features)
        if s + d_model > d_ffn:
            raise LSLoConfigError(
                f"--lslo-ffn-slice-offset {s}: the {position} adapter slice [{s}, {s + d_model}) of the FFN "
                f"hidden layer does not fit its width {d_ffn} (need offset + d_model <= d_ffn, d_model={d_model})"
            )
        return (full_in, (s, d_model)) if position == "fc1" else ((s, d_model), full_out)

    def configured_ranks(self, kind: str) -> List[int]:
        """The rank of each slot of a bank of ``kind`` as configured (before any rank pruning)."""
        return [self.shared_rank] if kind == "shared" else list(self.ranks)

    def slot_ranks(self, kind: str, bank: Optional[str] = None) -> List[int]:
        """The rank of each slot of the bank at path ``bank`` (its kept ranks, if compacted)."""
        return list(self.bank_ranks.get(bank, self.configured_ranks(kind))) if bank else self.configured_ranks(kind)

    def slot_owners(self, kind: str) -> List[str]:
        """Who owns each slot of a bank of ``kind``: the language codes, or ``shared`` for the one shared slot."""
        return ["shared"] if kind == "shared" else self.codes

    def bucket_owners(self, kind: str, bank: Optional[str] = None) -> Dict[int, List[str]]:
        """Rank -> the owners of the rows of ``A{rank}``/``B{rank}`` in the bank at path ``bank``."""
        return bucket_owners(self.slot_owners(kind), self.slot_ranks(kind, bank))

    def build_bank(self, kind: str, in_features: int, out_features: int, position: Optional[str] = None,
                   bank: Optional[str] = None) -> LowRankBank:
        """A language bank (src/tgt kind) or the single shared adapter of a host linear map
        ``in_features -> out_features`` at ``position`` (fc1, q, cross_k, ...); ``bank`` is its path
        (``encoder.layers.0.fc1.lslo_src``), which picks its kept ranks in a compacted model."""
        in_span, out_span = self.spans(position, in_features, out_features)
        return LowRankBank(in_features, out_features, self.slot_ranks(kind, bank), self.alpha, in_span=in_span,
                           out_span=out_span, init=self.init, scaling=self.scaling,
                           scale_ranks=self.configured_ranks(kind))

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        extra = {"bank_ranks": {k: list(v) for k, v in self.bank_ranks.items()}} if self.bank_ranks else {}
        return {
            "version": max(int(self.version), BANK_RANKS_VERSION) if self.bank_ranks else self.version,
            "languages": self.languages,
            "ranks": self.ranks,
            "alpha": self.alpha,
            "shared_rank": self.shared_rank,
            "encoder": {"positions": self.encoder.positions, "routing": self.encoder.routing},
            "decoder": {"positions": self.decoder.positions, "routing": self.decoder.routing},
            "ffn_coverage": self.ffn_coverage,
            "ffn_slice_offset": self.ffn_slice_offset,
            "init": self.init,
            "scaling": self.scaling,
            **extra,
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
            ffn_coverage=str(d.get("ffn_coverage", _LEGACY["ffn_coverage"])),
            ffn_slice_offset=int(d.get("ffn_slice_offset", _LEGACY["ffn_slice_offset"])),
            init=str(d.get("init", _LEGACY["init"])),
            scaling=str(d.get("scaling", _LEGACY["scaling"])),
            # read as the current version: the keys version 1 lacked are filled with what it meant
            version=max(int(d.get("version", 1)), CONFIG_VERSION),
            bank_ranks={str(k): [int(r) for r in v] for k, v in d.get("bank_ranks", {}).items()},
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
        for key in ("languages", "ranks", "alpha", "shared_rank", "ffn_coverage", "ffn_slice_offset", "init",
                    "scaling"):
            if a[key] != b[key]:
                out.append(f"{key}: {a[key]} vs {b[key]}")
        for side in ("encoder", "decoder"):
            for key in ("positions", "routing"):
                if a[side][key] != b[side][key]:
                    out.append(f"{side} {key}: {a[side][key]} vs {b[side][key]}")
        if self.bank_ranks != other.bank_ranks:
            differ = sorted(k for k in set(self.bank_ranks) | set(other.bank_ranks)
                            if self.bank_ranks.get(k) != other.bank_ranks.get(k))
            out.append(f"kept ranks after rank pruning (bank_ranks) differ in {len(differ)} banks, e.g. {differ[0]}: "
                       f"{self.bank_ranks.get(differ[0], 'as configured')} vs {other.bank_ranks.get(differ[0], 'as configured')}")
        return out

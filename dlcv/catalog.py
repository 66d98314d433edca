"""Which shipped checkpoint plays which role, the digit domains, the UDA methods and their ranking, and the UDA
checkpoint names `uda_<method>_<source>_to_<target>` (one parser, one formatter). Pure data: no torch here."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

# ---------------------------------------------------------------- roles of the shipped checkpoints

GAN_A = "dcgan_faces"  # the course's method A: DCGAN
GAN_B = "sngan_faces"  # the course's method B: the improved face GAN
SMILING_GAN = "acgan_faces"  # ACGAN on faces, label 1 = Smiling
FACE_VAE = "vae_faces"
SMILING_CLASSIFIER = "smiling_classifier"  # judges the Smiling ACGAN; not one of its teachers
DIGIT_DIFFUSION = "ddpm_digits"
DIGIT_GAN = "acgan_digits"
ROLES: dict[str, str] = {"gan_a": GAN_A, "gan_b": GAN_B, "smiling_gan": SMILING_GAN, "face_vae": FACE_VAE,
                         "smiling_classifier": SMILING_CLASSIFIER, "digit_diffusion": DIGIT_DIFFUSION,
                         "digit_gan": DIGIT_GAN}
FACE_GAN_ORDER = (GAN_A, GAN_B, "wgan_gp_faces")  # how the demo lists face GANs: A, B, then any other by name

# ---------------------------------------------------------------- digit domains

DOMAINS = ("mnistm", "usps", "mnist", "svhn", "mnistm_synth")
GREY_DOMAINS = ("usps", "mnist")  # stored 1-channel; training reads this from the files, the demo (no data) from here
# ordered (source, target) pairs: the course's pair first, then those with a published anchor
UDA_PAIRS = (("mnistm", "usps"), ("usps", "mnistm"), ("mnist", "mnistm"), ("mnist", "usps"), ("usps", "mnist"),
             ("mnistm", "svhn"), ("svhn", "mnistm"), ("usps", "svhn"), ("svhn", "usps"))


def domain_in_path(path_parts: Iterable[str]) -> str | None:
    """The domain named by path components (last first): one equal to a domain, else one containing one, longest
    name first so "mnistm" is not read as "mnist"; None if none does."""
    parts = [p.lower() for p in path_parts][::-1]
    by_length = sorted(DOMAINS, key=len, reverse=True)
    for part in parts:
        if part in DOMAINS:
            return part
    for part in parts:
        for domain in by_length:
            if domain in part:
                return domain
    return None


# ---------------------------------------------------------------- UDA methods

# slot of each method in the course's table: lower bound, DANN, the improved method, upper bound
METHOD_SLOT = {"source_only": "lower", "dann": "dann", "vada": "improved", "refine": "improved", "assoc": "improved",
               "gta": "improved", "target_only": "upper"}
METHODS = tuple(METHOD_SLOT)
# which method a pair ships (grading's and hw2_3's model), best first. Target-only reads target labels, and a method
# missing here (assoc and gta, which have no measured row, or an unknown one) is unranked, so none of them is a
# pair's model.
SHIP_RANK = ("refine", "vada", "dann", "source_only")


def method_rank(method: str) -> int:
    """Position in SHIP_RANK (0 = best); target-only and unknown methods come after every ranked one."""
    return SHIP_RANK.index(method) if method in SHIP_RANK else len(SHIP_RANK)


def method_order(method: str) -> tuple[int, str]:
    """Sort key for listing a pair's methods: the table's order (METHODS), then unknown methods by name."""
    return (METHODS.index(method) if method in METHODS else len(METHODS), method)


# ---------------------------------------------------------------- UDA checkpoint names

_DOMAIN = r"[a-z0-9]+(?:_synth)?"
_NAME = re.compile(rf"^uda_(?P<method>[a-z0-9_]+?)_(?P<source>{_DOMAIN})_to_(?P<target>{_DOMAIN})$")
_PAIR = re.compile(rf"^(?P<source>{_DOMAIN})_to_(?P<target>{_DOMAIN})$")


def pair_name(source: str, target: str) -> str:
    """<source>_to_<target>: a pair in file names (grading's adaptation/<pair>.csv, figures)."""
    return f"{source}_to_{target}"


def parse_pair_name(text: str) -> tuple[str, str] | None:
    """(source, target) of <source>_to_<target>, else None."""
    match = _PAIR.match(text)
    return (match["source"], match["target"]) if match else None


class UDAName(NamedTuple):
    method: str
    source: str
    target: str


def uda_name(method: str, source: str, target: str) -> str:
    """The checkpoint name of a UDA model: uda_<method>_<source>_to_<target>."""
    name = f"uda_{method}_{pair_name(source, target)}"
    if parse_uda_name(name) != (method, source, target):
        raise ValueError(f"cannot name a UDA checkpoint from method={method!r}, source={source!r}, "
                         f"target={target!r}; use lower-case letters, digits and _ (domains: {', '.join(DOMAINS)})")
    return name


def parse_uda_name(name: str) -> UDAName | None:
    """(method, source, target) of a name uda_<method>_<source>_to_<target>, else None."""
    match = _NAME.match(name)
    return UDAName(match["method"], match["source"], match["target"]) if match else None


@dataclass
class UDAPair:
    """The UDA checkpoints of one (source, target) pair, by method."""

    source: str
    target: str
    methods: dict[str, str] = field(default_factory=dict)  # method -> checkpoint name

    @property
    def shipped(self) -> str | None:
        """The pair's model (the best-ranked method in SHIP_RANK), or None when no ranked method is there."""
        ranked = sorted((method_rank(m), m) for m in self.methods if m in SHIP_RANK)
        return self.methods[ranked[0][1]] if ranked else None

    def slot(self, slot: str) -> list[str]:
        """Methods of this pair in a table slot ("lower", "dann", "improved", "upper"), best-ranked first."""
        return sorted((m for m in self.methods if METHOD_SLOT.get(m) == slot), key=method_rank)


def uda_pairs(names: Iterable[str]) -> dict[tuple[str, str], UDAPair]:
    """Group checkpoint names uda_<method>_<source>_to_<target> by pair, in UDA_PAIRS order then by name; methods in
    the table's order; other names are ignored."""
    pairs: dict[tuple[str, str], UDAPair] = {}
    for name in sorted(names):
        parsed = parse_uda_name(name)
        if parsed:
            pairs.setdefault((parsed.source, parsed.target), UDAPair(parsed.source, parsed.target)).methods[
                parsed.method] = name
    for pair in pairs.values():
        pair.methods = dict(sorted(pair.methods.items(), key=lambda kv: method_order(kv[0])))
    order = {p: i for i, p in enumerate(UDA_PAIRS)}
    return dict(sorted(pairs.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def demo_models(names: Iterable[str]) -> list[str]:
    """The checkpoints the demo and the Space use out of `names`: every role, then every UDA checkpoint."""
    names = set(names)
    return [n for n in ROLES.values() if n in names] + [n for pair in uda_pairs(names).values()
                                                         for n in pair.methods.values()]

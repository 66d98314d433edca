"""dlcv.catalog: the UDA naming scheme (one parser, one formatter), the method ranking, pair grouping, domains, and
the README front matter listing exactly the checkpoints the demo uses."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlcv import catalog

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method, source, target", [
    ("dann", "mnistm", "usps"), ("source_only", "mnistm_synth", "usps"), ("target_only", "usps", "mnistm_synth"),
    ("refine", "mnist", "mnistm"), ("vada", "svhn", "mnist")])
def test_uda_name_round_trips(method, source, target):
    name = catalog.uda_name(method, source, target)
    assert name == f"uda_{method}_{source}_to_{target}"
    assert catalog.parse_uda_name(name) == (method, source, target)


@pytest.mark.parametrize("name", ["dcgan_faces", "uda_dann_mnistm", "uda__mnistm_to_usps", "uda_dann_MNISTM_to_usps",
                                  "xuda_dann_mnistm_to_usps"])
def test_parse_uda_name_refuses_other_names(name):
    assert catalog.parse_uda_name(name) is None


def test_uda_name_refuses_a_name_it_could_not_parse_back():
    with pytest.raises(ValueError, match="cannot name a UDA checkpoint"):
        catalog.uda_name("dann", "MNIST M", "usps")


def test_pair_name_round_trips():
    assert catalog.parse_pair_name(catalog.pair_name("mnistm_synth", "usps")) == ("mnistm_synth", "usps")
    assert catalog.parse_pair_name("mnistm-usps") is None


def test_an_unknown_method_is_never_a_pairs_model():
    names = ["uda_experimental_mnistm_to_usps", "uda_dann_mnistm_to_usps", "uda_target_only_mnistm_to_usps"]
    pair = catalog.uda_pairs(names)[("mnistm", "usps")]
    assert pair.shipped == "uda_dann_mnistm_to_usps"
    assert catalog.method_rank("experimental") == catalog.method_rank("target_only") == len(catalog.SHIP_RANK)
    only_unranked = catalog.uda_pairs(["uda_experimental_usps_to_mnist", "uda_target_only_usps_to_mnist"])
    assert only_unranked[("usps", "mnist")].shipped is None


def test_pairs_ship_the_best_ranked_method_and_fill_the_table_slots():
    names = [catalog.uda_name(m, "usps", "mnistm") for m in ("source_only", "dann", "vada", "refine", "target_only")]
    pair = catalog.uda_pairs(names + ["dcgan_faces"])[("usps", "mnistm")]
    assert pair.shipped == "uda_refine_usps_to_mnistm"
    assert list(pair.methods) == ["source_only", "dann", "vada", "refine", "target_only"]
    assert pair.slot("improved") == ["refine", "vada"] and pair.slot("lower") == ["source_only"]
    assert pair.slot("upper") == ["target_only"] and pair.slot("dann") == ["dann"]


def test_pairs_come_in_the_catalog_order():
    names = ["uda_dann_usps_to_mnist", "uda_dann_zz_to_usps", "uda_dann_mnistm_to_usps"]
    assert list(catalog.uda_pairs(names)) == [("mnistm", "usps"), ("usps", "mnist"), ("zz", "usps")]


@pytest.mark.parametrize("parts, domain", [
    (("hw2_data", "digits", "usps", "data"), "usps"), (("x", "svhn_test"), "svhn"),
    (("x", "mnistm_synth", "data"), "mnistm_synth"), (("x", "my_mnistm"), "mnistm"), (("tmp", "images"), None)])
def test_domain_in_path(parts, domain):
    assert catalog.domain_in_path(parts) == domain


def test_every_role_and_uda_model_is_shipped_and_in_the_readme_front_matter():
    """The Space pulls the README's `models:` list: it must name every role and every shipped UDA checkpoint."""
    shipped = {p.name for p in (ROOT / "checkpoints").iterdir() if (p / "config.json").is_file()}
    assert set(catalog.ROLES.values()) <= shipped
    front = (ROOT / "README.md").read_text().split("---")[1]
    listed = [line.strip()[2:].split("/")[-1] for line in front.splitlines() if line.strip().startswith("- ")]
    assert sorted(listed) == sorted(catalog.demo_models(shipped))  # each once; the order is the README's
    assert all(pair.shipped for pair in catalog.uda_pairs(shipped).values())

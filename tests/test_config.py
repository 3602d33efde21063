"""Config loading: defaults, overrides, fraction parsing, and one precise message per bad config."""

from __future__ import annotations

import pytest

from gkp.application.config import apply_override, build_experiment, dump_experiment, load_experiment
from gkp.foundation.errors import ConfigError

from conftest import tiny_config, write_config


def test_defaults_follow_the_paper_recipe():
    exp = build_experiment({"model": {"arch": "resnet56"}, "prune": {"method": "l1"}})
    assert exp.stages == ("train", "prune", "finetune", "eval")
    assert (exp.train.lr, exp.train.epochs, exp.train.schedule, exp.train.step_size) == (0.1, 300, "step", 100)
    assert (exp.finetune.lr, exp.finetune.epochs) == (0.01, 300)
    assert exp.data.batch_size == 64 and exp.train.weight_decay == 5e-4
    assert exp.prune.rate == 0.4375


def test_fraction_strings_and_defaults_resolve():
    exp = build_experiment(
        tiny_config(
            attacks=[{"name": "pgd", "eps": "8/255"}, {"name": "fgsm", "eps": 0.1}, {"name": "fgsm", "eps": "1 / 255"}]
        )
    )
    pgd, fgsm_1, fgsm_2 = exp.attacks
    assert pgd.params.eps == pytest.approx(8 / 255) and pgd.params.step_size == pytest.approx(2 / 255)
    assert [a.label for a in exp.attacks] == ["pgd", "fgsm_1", "fgsm_2"]
    assert fgsm_2.params.eps == pytest.approx(1 / 255)


def test_set_overrides_reach_nested_keys_and_list_entries(tmp_path):
    path = write_config(tmp_path / "x.yaml", tiny_config())
    exp = load_experiment(path, ["prune.rate=0.625", "attacks.1.steps=7", "train.milestones=[1, 2]"])
    assert exp.prune.rate == 0.625 and exp.attacks[1].params.steps == 7 and exp.train.milestones == (1, 2)
    assert exp.name == "tiny"


def test_name_defaults_to_the_file_stem(tmp_path):
    config = tiny_config()
    del config["name"]
    assert load_experiment(write_config(tmp_path / "my_run.yaml", config)).name == "my_run"


def test_resolved_config_round_trips(tmp_path):
    exp = build_experiment(tiny_config())
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_experiment(exp))
    assert load_experiment(path) == exp


def _break(section: str, **values):
    return tiny_config(**{section: values})


BAD_CONFIGS = [
    ("unknown top-level key", {**tiny_config(), "trian": {}}, "trian: unknown key (did you mean 'train'?)"),
    ("unknown nested key", _break("train", lrr=0.1), "train.lrr: unknown key (did you mean 'lr'?)"),
    ("wrong type for a number", _break("train", lr="fast"), "train.lr: must be a number such as 0.03 or 8/255"),
    ("bool where int", _break("train", epochs=True), "train.epochs: must be a whole number, got True"),
    ("float where int", _break("train", epochs=2.5), "train.epochs: must be a whole number, got 2.5"),
    ("zero epochs", _break("train", epochs=0), "train.epochs: must be >= 1"),
    ("nesterov without momentum", _break("train", nesterov=True, momentum=0.0), "train.nesterov: Nesterov momentum"),
    ("negative learning rate", _break("finetune", lr=-0.1), "finetune.lr: must be > 0"),
    ("unknown schedule", _break("train", schedule="cosin"), "train.schedule: must be one of"),
    ("multistep without milestones", _break("train", schedule="multistep"), "train.milestones: schedule multistep"),
    ("decreasing milestones", _break("train", schedule="multistep", milestones=[5, 2]), "must be increasing"),
    ("unknown arch", _break("model", arch="resnet21"), "model.arch: unknown model arch 'resnet21'"),
    ("unknown arch argument", _break("model", args={"widht": 8}), "model.args.widht: 'resnet8' takes no argument"),
    ("no arch and no checkpoint", {**tiny_config(), "model": {}}, "model.arch: required unless model.checkpoint"),
    ("unknown method", _break("prune", method="l3"), "prune.method: unknown pruning method 'l3'"),
    ("rate of one", _break("prune", rate=1.0), "prune.rate: must be in (0, 1) (exclusive), got 1.0"),
    ("negative rate", _break("prune", rate=-0.2), "prune.rate: must be in (0, 1) (exclusive), got -0.2"),
    ("unknown method parameter", _break("prune", params={"groups": 8}), "prune.params.groups: unknown key"),
    ("unknown attack", {**tiny_config(), "attacks": [{"name": "cw2"}]}, "attacks[0].name: unknown attack 'cw2'"),
    ("attack without a name", {**tiny_config(), "attacks": [{"eps": 0.1}]}, "attacks[0]: each attack is a mapping"),
    (
        "unknown attack parameter",
        {**tiny_config(), "attacks": [{"name": "pgd", "stepz": 3}]},
        "attacks[0].stepz: unknown key (did you mean 'steps'?)",
    ),
    (
        "malformed eps",
        {**tiny_config(), "attacks": [{"name": "fgsm", "eps": "8/0"}]},
        "attacks[0].eps: must be a number such as 0.03 or 8/255, got '8/0'",
    ),
    ("eps above one", {**tiny_config(), "attacks": [{"name": "fgsm", "eps": 8}]}, "attacks[0].eps: must be in [0, 1]"),
    ("zero pgd steps", {**tiny_config(), "attacks": [{"name": "pgd", "steps": 0}]}, "attacks[0].steps: must be >= 1"),
    (
        "duplicate labels",
        {**tiny_config(), "attacks": [{"name": "pgd", "label": "a"}, {"name": "fgsm", "label": "a"}]},
        "attacks: the label 'a' is used twice",
    ),
    ("attacks not a list", {**tiny_config(), "attacks": {"name": "pgd"}}, "attacks: must be a list of attacks"),
    (
        "eval attack not in suite",
        _break("finetune", eval_attacks=["pgd20"]),
        "finetune.eval_attacks: 'pgd20' is not the label of an attack",
    ),
    ("unknown stage", {**tiny_config(), "stages": ["train", "purne"]}, "stages[1]: must be one of"),
    ("stages out of order", {**tiny_config(), "stages": ["prune", "train"]}, "stages: each stage at most once"),
    ("checkpoint and train", _break("model", checkpoint="x.ckpt"), "model.checkpoint: the dense model is loaded"),
    (
        "prune stage without prune section",
        {k: v for k, v in tiny_config().items() if k != "prune"},
        "prune: the prune stage needs a prune section",
    ),
    (
        "unknown dataset",
        _break("data", name="cifar11"),
        "data.name: unknown dataset 'cifar11' (did you mean 'cifar10'?); valid choices: cifar10",
    ),
    ("npz without a path", {**tiny_config(), "data": {"name": "npz"}}, "data.path: an npz dataset needs"),
    (
        "npz eval-only file for training",
        {**tiny_config(), "data": {"name": "npz", "path": "x.npz"}},
        "data.train_path: the train/finetune stages need an npz training file",
    ),
    ("path for a non-npz dataset", _break("data", path="x.npz"), "data.path: path, train_path and test_path are for"),
    ("select on val without a split", _break("train", select_on="val"), "train.select_on: 'val' needs a validation"),
    ("val fraction of one", _break("data", val_fraction=1.0), "data.val_fraction: must be in [0, 1)"),
    ("mean without std", _break("data", mean=[0.5, 0.5, 0.5]), "data.mean: give data.mean and data.std together"),
    ("bad device", {**tiny_config(), "device": "gpu"}, "device: must be auto, cpu, cuda, cuda:N or mps"),
    (
        "unknown eval model",
        {**tiny_config(), "eval": {"models": ["best_pgd"]}},
        "eval.models: unknown model 'best_pgd'",
    ),
    ("bad name", {**tiny_config(), "name": "my run/1"}, "name: must be letters, digits"),
    ("section not a mapping", {**tiny_config(), "train": [1, 2]}, "train: must be a mapping with keys"),
]


@pytest.mark.parametrize("raw, message", [(c, m) for _, c, m in BAD_CONFIGS], ids=[n for n, _, _ in BAD_CONFIGS])
def test_bad_config_fails_with_its_own_message(raw, message):
    with pytest.raises(ConfigError) as error:
        build_experiment(raw)
    assert message in str(error.value)


def test_every_bad_config_message_is_distinct():
    assert len({m for _, _, m in BAD_CONFIGS}) == len(BAD_CONFIGS) >= 20


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("prune.rate", "expected key.path=value"),
        ("attacks.5.eps=0.1", "'attacks.5' indexes a list of 2 entries"),
        ("name.first=1", "'name' is not a section"),
    ],
)
def test_bad_overrides(assignment, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        apply_override(tiny_config(), assignment)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_experiment(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: {lr: [}")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_experiment(tmp_path / "bad.yaml")


def test_the_paper_cifar_suite_expands_to_the_papers_attacks_in_order():
    exp = build_experiment(tiny_config(attacks=[{"suite": "paper-cifar"}]))
    assert [a.label for a in exp.attacks] == ["fgsm_0.01", "fgsm_0.1", "pgd_3"]
    fgsm_small, fgsm_large, pgd = exp.attacks
    assert (fgsm_small.params.eps, fgsm_large.params.eps) == (0.01, 0.1)
    assert {a.space for a in exp.attacks} == {"normalized"} and all(a.clip for a in exp.attacks)
    assert (fgsm_small.labels, fgsm_large.labels, pgd.labels) == ("predicted", "predicted", "true")
    assert pgd.params.eps == pytest.approx(8 / 255) and pgd.params.step_size == pytest.approx(2 / 255)
    assert (pgd.params.steps, pgd.params.random_start) == (3, False)


def test_the_imagenet_and_strong_suites():
    exp = build_experiment(
        tiny_config(attacks=[{"suite": "paper-imagenet"}, {"suite": "strong", "eps": 0.5, "norm": "l2"}])
    )
    labels = [a.label for a in exp.attacks]
    assert labels == ["fgsm_0.001", "fgsm_0.01", "fgsm_0.1", "pgd_3", "apgd_ce", "apgd_t", "fab_t", "square"]
    assert not any(a.clip for a in exp.attacks[:4])
    assert exp.attacks[3].params.eps == pytest.approx(4 / 255) and exp.attacks[3].params.step_size == pytest.approx(
        1 / 255
    )
    assert all(a.params.eps == 0.5 and a.params.norm == "l2" and a.space == "pixel" for a in exp.attacks[4:])


def test_the_strong_suite_twice_gets_numbered_labels():
    strong = [{"suite": "strong", "eps": "8/255"}, {"suite": "strong", "eps": 0.5, "norm": "l2"}]
    exp = build_experiment(tiny_config(attacks=strong))
    names = ("apgd_ce", "apgd_t", "fab_t", "square")
    assert [a.label for a in exp.attacks] == [f"{n}_{i}" for i in (1, 2) for n in names]
    assert [a.params.norm for a in exp.attacks] == ["linf"] * 4 + ["l2"] * 4


def test_the_strong_suites_earlier_attacks_keep_their_settings_and_labels():
    """FAB-T joined the suite: the three attacks it had (as it expanded them then) are unchanged, so their
    entries in results.json compare with earlier runs'."""
    before = [
        {"name": "apgd_ce", "eps": "8/255", "norm": "linf"},
        {"name": "apgd_t", "eps": "8/255", "norm": "linf"},
        {"name": "square", "eps": "8/255", "norm": "linf", "rescale_schedule": False},
    ]
    now = build_experiment(tiny_config(attacks=[{"suite": "strong", "eps": "8/255"}])).attacks
    earlier = build_experiment(tiny_config(attacks=before)).attacks
    assert [a.to_dict() for a in now if a.name != "fab_t"] == [a.to_dict() for a in earlier]
    rescaled = build_experiment(tiny_config(attacks=[{"suite": "strong", "eps": "8/255", "rescale_schedule": True}]))
    assert rescaled.attacks[-1].params.rescale_schedule is True


@pytest.mark.parametrize(
    "attacks, message",
    [
        ([{"suite": "paper-cifra"}], "attacks[0].suite: unknown suite 'paper-cifra' (did you mean 'paper-cifar'?)"),
        ([{"suite": "paper-cifar", "eps": 0.1}], "attacks[0].eps: the suite paper-cifar takes no other keys"),
        ([{"suite": "strong"}], "attacks[0].eps: the suite strong needs an eps"),
        ([{"name": "pgd", "space": "normalised"}], "attacks[0].space: must be one of pixel, normalized"),
        ([{"name": "fgsm", "labels": "guessed"}], "attacks[0].labels: must be one of true, predicted"),
        ([{"suite": "paper-cifar"}, {"name": "fgsm", "label": "pgd_3"}], "attacks: the label 'pgd_3' is used twice"),
    ],
)
def test_bad_attack_entries(attacks, message):
    with pytest.raises(ConfigError) as error:
        build_experiment(tiny_config(attacks=attacks))
    assert message in str(error.value)

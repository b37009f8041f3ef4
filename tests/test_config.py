"""The config: every field has allowed values, checked before anything is recorded or written."""
import dataclasses

import pytest

import config as C
import world_model as W


@pytest.mark.parametrize("overrides, msg", [
    (["ae.stepz=3"], "stepz"),
    (["ae.steps=many"], "ae.steps"),
    (["data.val_seed=0"], "val_seed must differ"),
    (["data.table_seed=1"], "table_seed=1 must differ from data.seed and data.val_seed"),
    (["model.context=1"], "model.context=1 is not allowed: must be >= 2"),
    (["data.game=Breakout"], "the tracker reads Pong.s RAM; use data.policy=random for Breakout"),
    (["model.global_width=12"], "model.global_width=12 is not allowed: a positive multiple of 8"),
    (["ae.steps"], "key=value"),
    (["ae.schedule=linear"], "ae.schedule='linear' is not allowed: choose one of one_cycle, cosine, constant"),
    (["pred.loss=l1"], "pred.loss"),
    (["data.prefetch_factor=2"], "need data.num_workers > 0"),
    (["train.precision=bf16", "train.cpu=true"], "train.precision needs CUDA"),
    (["train.compile=true", "train.cpu=true"], "train.compile needs CUDA"),
    (["experiment.wandb.mode=on"], "experiment.wandb.mode"),
    (["optim.lr=fast"], "optim.lr"),
    (["data.val_fraction=1.5"], r"data.val_fraction=1.5 is not allowed: must lie in \(0, 1\)"),
    (["ae.margin_weight=-1"], "ae.margin_weight=-1.0 is not allowed: must be >= 0"),
    # issue 12, case 4: values that used to train silently wrong
    (["ae.grad_clip=-1"], "ae.grad_clip=-1.0 is not allowed: must be > 0"),
    (["pred.grad_clip=-1"], "pred.grad_clip=-1.0 is not allowed: must be > 0"),
    (["model.latent_dim=0"], "model.latent_dim=0 is not allowed: must be >= 8"),
    (["pred.unknown_past_prob=5"], r"pred.unknown_past_prob=5.0 is not allowed: must lie in \[0, 1\]"),
    (["eval.rollout_frames=-3"], "eval.rollout_frames=-3 is not allowed: must be >= 1"),
    (["eval.video_frames=-1"], "eval.video_frames=-1 is not allowed: must be >= 1"),
    # case 5: caught too late before
    (["optim.lr=-1"], "optim.lr=-1.0 is not allowed: must be > 0"),
    (["ae.lr=-0.1"], "ae.lr=-0.1 is not allowed: must be > 0"),
    (["ae.huber_delta=-1"], "ae.huber_delta=-1.0 is not allowed: must be > 0"),
    (["pred.lr=nan"], "pred.lr=nan is not allowed: give a finite number"),
    (["data.policy=human"], "data.policy='human' is not allowed: choose random, sticky or tracker"),
    (["experiment.name=a/b"], "experiment.name='a/b' is not allowed"),
])
def test_bad_config_is_one_clear_error(overrides, msg):
    with pytest.raises(W.UsageError, match=msg):
        W.make_config(overrides)


def test_every_field_has_its_allowed_values_and_the_defaults_keep_them():
    assert set(C.field_names()) == set(C.RULES)              # a new field without a rule fails here
    for name in C.RULES:
        assert C._breaks(C.get(C.Config(), name), C.RULES[name]) is None, name


@pytest.mark.parametrize("argv", [["ae.grad_clip=-1"], ["optim.lr=-1"], ["ae.huber_delta=-1"], ["model.latent_dim=0"],
                                  ["--config", "LIST"], ["--config", "BROKEN"], ["--config", "MISSING"]])
def test_bad_values_stop_before_anything_is_recorded_or_written(argv, tmp_path, capsys, monkeypatch):
    (tmp_path / "list.yaml").write_text("- ae\n- pred\n")
    (tmp_path / "broken.yaml").write_text("ae: {steps: [\n")
    argv = [str(tmp_path / f"{a.lower()}.yaml") if a.isupper() else a for a in argv]
    monkeypatch.setattr(W, "record_sets", lambda *a, **k: pytest.fail("recorded frames despite a bad config"))
    rc = W.main([*argv, f"experiment.out_dir={tmp_path}/runs", f"experiment.assets_dir={tmp_path}/assets"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"list.yaml", "broken.yaml"})   # no run, no assets


def test_show_config_prints_every_field_as_yaml_that_reads_back(tmp_path, capsys):
    assert W.main(["--show-config", "ae.steps=5", "optim.lr=0.01"]) == 0
    text = capsys.readouterr().out
    for name in C.field_names():
        assert f"{name.split('.')[-1]}:" in text, name
    assert "steps: 5" in text and "# [>= 1] optimizer steps of the autoencoder loop" in text
    (tmp_path / "shown.yaml").write_text(text)
    assert W.make_config(yaml_path=str(tmp_path / "shown.yaml")) == W.make_config(["ae.steps=5", "optim.lr=0.01"])
    assert dataclasses.asdict(W.make_config(yaml_path=str(tmp_path / "shown.yaml")))["optim"]["lr"] == 0.01


def test_only_the_default_recipe_refreshes_the_readmes_pictures():
    assert W.make_config().refreshes_assets()                                   # python world_model.py
    assert W.make_config(["experiment.out_dir=/tmp/x", "experiment.name=mine", "train.device=cpu",
                          "data.num_workers=2", "heldout.starts=10"]).refreshes_assets()   # where, not what
    assert not W.make_config(["ae.steps=50"]).refreshes_assets()               # a smoke run leaves assets/ alone
    assert not W.make_config(list(W.SMALL_BUDGET)).refreshes_assets()
    assert W.make_config(["ae.steps=50", "experiment.refresh_assets=always"]).refreshes_assets()
    assert not W.make_config(["experiment.refresh_assets=never"]).refreshes_assets()

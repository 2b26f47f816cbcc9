"""LAMP's multimodal segmentation network, its nnU-Net trainer, and ``lamp segment``."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lamp.segmentation.network import LampSegNet, MultiDecoderLoss, MultiDecoderOutput

ARCH = dict(
    n_stages=3,
    features_per_stage=[32, 16, 16],
    conv_op=nn.Conv3d,
    kernel_sizes=[[3, 3, 3]] * 3,
    strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    n_conv_per_stage=[1, 1, 1],
    n_conv_per_stage_decoder=[1, 1],
    conv_bias=True,
    norm_op=nn.InstanceNorm3d,
    norm_op_kwargs={"eps": 1e-5, "affine": True},
    nonlin=nn.LeakyReLU,
    nonlin_kwargs={"inplace": True},
)


def _net(ds: bool = True) -> LampSegNet:
    torch.manual_seed(0)
    return LampSegNet(num_classes=2, deep_supervision=ds, **ARCH)


def test_one_encoder_shared_by_both_modalities():
    net = _net()
    encoders = [m for m in net.modules() if type(m).__name__ == "PlainConvEncoder"]
    assert len(encoders) == 1
    first = net.encoder.stages[0][0].convs[0].conv
    assert first.in_channels == 1  # one modality at a time, the same weights for both
    keys = list(net.state_dict())
    assert not any(".encoder." in k for k in keys if not k.startswith("encoder."))
    # CT alone through the encoder equals the CT half of the shared batch
    x = torch.randn(2, 2, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        both = net.encoder(torch.cat((x[:, :1], x[:, 1:]), 0))
        ct_only = net.encoder(x[:, :1])
    torch.testing.assert_close(both[0][:2], ct_only[0])


def test_output_shapes_features_and_fusion_weights():
    net = _net()
    x = torch.randn(2, 2, 16, 16, 16)
    out = net(x)
    assert isinstance(out, MultiDecoderOutput)
    assert [tuple(o.shape) for o in out] == [(2, 2, 16, 16, 16), (2, 2, 8, 8, 8)]
    assert len(out.aux) == 3 and all(len(a) == 2 for a in out.aux)
    net.eval()
    net.set_deep_supervision(False)
    logits = net(x)
    assert logits.shape == (2, 2, 16, 16, 16)
    torch.testing.assert_close(torch.softmax(logits, 1).sum(1), torch.ones(2, 16, 16, 16))
    prob, feats = net.forward_features(x)
    assert prob.shape == (2, 1, 16, 16, 16) and feats.shape == (2, 128, 16, 16, 16)
    assert net.feature_channels == (64, 32, 32)
    w = net.fusion_weights(x)
    assert w.shape == (2, 3, 16, 16, 16)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 16, 16, 16))
    # the final probability is the weighted sum of the three decoders' probabilities
    with torch.no_grad():
        _, weights, segs, _ = net._branches(x, False)
        mix = sum(
            weights[:, i : i + 1] * torch.softmax(s[0], 1)
            for i, s in enumerate((segs[2], segs[1], segs[0]))
        )
    torch.testing.assert_close(prob, mix[:, 1:2])


def test_loss_reaches_every_decoder_and_the_fusion_head():
    net = _net()
    x = torch.randn(1, 2, 16, 16, 16)
    y = [(torch.rand(1, 1, 16, 16, 16) > 0.8).float(), (torch.rand(1, 1, 8, 8, 8) > 0.8).float()]

    def base(outputs, target):
        return sum(
            nn.functional.cross_entropy(o, t[:, 0].long())
            for o, t in zip(outputs, target, strict=True)
        )

    loss = MultiDecoderLoss(base)(net(x), y)
    loss.backward()
    for name in ("decoder_ct", "decoder_pet", "decoder_fused", "fusion_head", "encoder"):
        grads = [p.grad for n, p in net.named_parameters() if n.startswith(name)]
        assert grads and all(g is not None for g in grads), name
    with torch.no_grad():
        only_main = base(list(net(x)), y)
    assert loss.item() > only_main.item()


def test_weights_load_whatever_the_deep_supervision_setting():
    trained = _net(ds=True)
    for_inference = LampSegNet(num_classes=2, deep_supervision=False, **ARCH)
    for_inference.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(1, 2, 16, 16, 16)
    trained.eval()
    trained.set_deep_supervision(False)
    for_inference.eval()
    torch.testing.assert_close(trained(x), for_inference(x))


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="num_classes must be 2"):
        LampSegNet(num_classes=3, **ARCH)
    with pytest.raises(ValueError, match=r"expects \(B, 2, z, y, x\)"):
        _net()(torch.randn(1, 1, 16, 16, 16))


def test_trainer_builds_the_network_from_plans_strings():
    from lamp.segmentation.trainer import build_lamp_network

    kwargs = {k: v for k, v in ARCH.items()}
    kwargs.update(
        conv_op="torch.nn.modules.conv.Conv3d",
        norm_op="torch.nn.modules.instancenorm.InstanceNorm3d",
        nonlin="torch.nn.LeakyReLU",
        dropout_op=None,
    )
    net = build_lamp_network(kwargs, ["conv_op", "norm_op", "dropout_op", "nonlin"], 2, True)
    assert isinstance(net, LampSegNet)
    assert isinstance(net.encoder.stages[0][0].convs[0].conv, nn.Conv3d)


@pytest.mark.slow
def test_lamp_segment_train_and_predict_on_a_tiny_cohort(tmp_path, capsys):
    """nnU-Net end to end on CPU: plan, preprocess, a few iterations of both networks on
    fold 0, out-of-fold prediction of fold 0, instances and metrics."""
    from lamp.segmentation import cli as seg_cli
    from lamp.segmentation.nnunet import SEG_CONFIGS, predict_out_of_fold, results_folder
    from lamp.synth.generate import SynthRequest, generate_cohort

    cohort = tmp_path / "cohort"
    work = tmp_path / "work"
    generate_cohort(SynthRequest(out=cohort, n_patients=5, size="tiny", export_nnunet=False))
    parser = argparse.ArgumentParser()
    seg_cli.add_parser(parser.add_subparsers())
    for plain in ([], ["--plain"]):
        args = parser.parse_args(
            [
                "segment",
                "train",
                "--cohort",
                str(cohort),
                "--work",
                str(work),
                "--fold",
                "0",
                "--epochs",
                "1",
                "--iterations",
                "1",
                *plain,
            ]
        )
        assert seg_cli.run(args) == 0, capsys.readouterr().out
    cfg = dataclasses.replace(SEG_CONFIGS["tiny"], num_epochs=1, iterations_per_epoch=1)
    for plain in (False, True):
        assert (results_folder(work, cfg, plain) / "fold_0" / "checkpoint_final.pth").is_file()
        # patients=: only those of the fold that are listed (none here)
        out = predict_out_of_fold(cohort, work, cfg, plain=plain, folds=[0], patients=[])
        assert not list(out.glob("*.nii.gz"))
        out = predict_out_of_fold(cohort, work, cfg, plain=plain, folds=[0])
        preds = sorted(p.name for p in out.glob("*.nii.gz"))
        assert len(preds) == 1 and not (out / ".partial").exists()
    # prediction on the PET grid, binary
    import nibabel as nib

    from lamp.segmentation.evaluate import evaluate_network

    pid = preds[0].removesuffix(".nii.gz")
    pred = nib.load(str(work / "segmentation" / "lamp" / "pred" / preds[0]))
    pet = nib.load(str(cohort / "cases" / pid / "pet.nii.gz"))
    assert pred.shape == pet.shape
    np.testing.assert_allclose(pred.affine, pet.affine, atol=1e-3)
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}
    # features of fold 0's patient from the fold-0 LAMP network, over predicted lesions
    # (after instances are made) and over the reference masks
    from lamp.features import load_case_features
    from lamp.images import save_nifti
    from lamp.segmentation.extract import extract_cohort_features
    from lamp.segmentation.instances import lesion_instances

    inst_dir = work / "segmentation" / "lamp" / "instances"
    inst = lesion_instances(np.asarray(pred.dataobj) > 0, 1.728)
    save_nifti(inst_dir / preds[0], inst, pred.affine, np.uint16)
    # only fold 0 is trained here: the other patients' "out-of-fold" instances stand in
    # from their reference masks, so that fold 0's network can pool its training patients
    others = sorted(p.name for p in (cohort / "cases").iterdir() if p.name != pid)
    for other in others:
        ref_img = nib.load(str(cohort / "cases" / other / "lesions.nii.gz"))
        ref_inst = lesion_instances(np.asarray(ref_img.dataobj) > 0, 1.728)
        save_nifti(inst_dir / f"{other}.nii.gz", ref_inst, ref_img.affine, np.uint16)
    for reference in (False, True):
        step = 1.0 if reference else 0.5  # the step reaches the sliding window
        run_cfg = dataclasses.replace(cfg, tile_step_size=step)
        out = extract_cohort_features(cohort, work, run_cfg, reference=reference, folds=[0])
        feats = load_case_features(out / f"{pid}.npz")
        assert feats.meta["step_size"] == step
        assert feats.meta["network"]["fold"] == 0  # out of fold: its fold's network
        assert feats.lesion_features.shape == (len(feats.lesion_ids), 128)
        assert feats.organ_features.shape == (71, 128) and feats.organ_present.sum() > 20
        assert np.isfinite(feats.organ_features).all()
        assert (out / "lesions.csv").is_file()
        # fold 0's network also pooled the patients it trained on, into fold_0/ only
        assert sorted(p.name for p in (out / "fold_0").glob("*.npz")) == [
            f"{o}.npz" for o in others
        ]
        assert not [o for o in others if (out / f"{o}.npz").is_file()]
        assert (
            load_case_features(out / "fold_0" / f"{others[0]}.npz").meta["network"]
            == (feats.meta["network"])
        )
        assert set(pd.read_csv(out / "lesions.csv")["patient_id"]) <= {pid}
    ref = load_case_features(work / "features_reference" / f"{pid}.npz")
    assert len(ref.lesion_ids) >= 1
    _reruns_follow_changed_inputs(cohort, work, cfg, pid, others)
    _new_patient_by_every_fold_network(cohort, work, cfg, pid, parser, tmp_path, capsys)
    # metrics need every patient predicted: only fold 0 was, so it says which is missing
    from lamp.segmentation.nnunet import SegmentError

    with pytest.raises(SegmentError, match="no prediction for patient"):
        evaluate_network(cohort, work, "lamp")


def _reruns_follow_changed_inputs(cohort, work, cfg, pid, others):
    """A rerun of predict/features skips what is done, and redoes what was made from an
    input that changed since: new instances, a retrained network, another step."""
    from lamp.cohort import file_digest
    from lamp.features import load_case_features
    from lamp.images import load_nifti, save_nifti
    from lamp.segmentation.extract import extract_cohort_features
    from lamp.segmentation.nnunet import predict_out_of_fold, results_folder

    run_cfg = dataclasses.replace(cfg, tile_step_size=0.5)
    feat = work / "features"
    files = [feat / f"{pid}.npz"] + [feat / "fold_0" / f"{o}.npz" for o in others]
    pred = work / "segmentation" / "lamp" / "pred" / f"{pid}.nii.gz"

    def mtimes():
        return {f: f.stat().st_mtime_ns for f in [*files, pred]}

    before = mtimes()
    predict_out_of_fold(cohort, work, cfg, folds=[0])
    extract_cohort_features(cohort, work, run_cfg, folds=[0])
    assert mtimes() == before  # nothing changed: nothing redone
    # new instances for one training patient: only its file is pooled again
    inst_path = work / "segmentation" / "lamp" / "instances" / f"{others[0]}.nii.gz"
    inst, aff = load_nifti(inst_path)
    save_nifti(inst_path, np.zeros(inst.shape, np.uint16), aff, np.uint16)
    extract_cohort_features(cohort, work, run_cfg, folds=[0])
    now = mtimes()
    assert [f for f in files if now[f] != before[f]] == [files[1]]
    redone = load_case_features(files[1])
    assert len(redone.lesion_ids) == 0
    assert redone.meta["source_sha256"]["lesions"] == file_digest(inst_path)
    # fold 0 "retrained" (another checkpoint): its prediction and all its files again
    ckpt = results_folder(work, cfg, False) / "fold_0" / "checkpoint_final.pth"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    first = next(iter(state["network_weights"]))
    state["network_weights"][first] = state["network_weights"][first] + 0.01
    torch.save(state, ckpt)
    predict_out_of_fold(cohort, work, cfg, folds=[0])
    assert pred.stat().st_mtime_ns != before[pred]
    record = json.loads((pred.parent / "predictions.json").read_text())
    assert record[pid]["checkpoint_sha256"] == file_digest(ckpt)
    extract_cohort_features(cohort, work, run_cfg, folds=[0])
    later = mtimes()
    assert all(later[f] != now[f] for f in files)
    assert load_case_features(files[0]).meta["network"]["checkpoint_sha256"] == file_digest(ckpt)
    # another step: predicted again
    stamp = pred.stat().st_mtime_ns
    predict_out_of_fold(cohort, work, dataclasses.replace(cfg, tile_step_size=1.0), folds=[0])
    assert pred.stat().st_mtime_ns != stamp


def _new_patient_by_every_fold_network(cohort, work, cfg, pid, parser, tmp_path, capsys):
    """lamp features --case: a patient outside the cohort, lesions by the ensemble of the
    trained fold networks, features by each of them (two here: fold 0 and a copy)."""
    import shutil

    import nibabel as nib

    from lamp.features import FeatureError, load_case_features
    from lamp.images import save_nifti
    from lamp.segmentation import cli as seg_cli
    from lamp.segmentation.extract import extract_new_case_features
    from lamp.segmentation.instances import lesion_instances
    from lamp.segmentation.nnunet import SegmentError, results_folder

    model_dir = results_folder(work, cfg, plain=False)
    shutil.copytree(model_dir / "fold_0", model_dir / "fold_1")
    case = tmp_path / "new" / "NEW01"
    case.mkdir(parents=True)
    for name in ("pet.nii.gz", "ct.nii.gz"):
        shutil.copy(cohort / "cases" / pid / name, case / name)
    out = tmp_path / "new_out"
    with pytest.raises(FeatureError, match="organs.nii.gz: no such file"):
        extract_new_case_features(case, work, cfg, out)
    shutil.copy(cohort / "cases" / pid / "organs.nii.gz", case / "organs.nii.gz")
    args = parser.parse_args(
        ["features", "--work", str(work), "--case", str(case), "--out", str(out), "--step", "1"]
    )
    assert seg_cli.run(args) == 0, capsys.readouterr().out
    assert f"--features {out / 'fold_0' / 'NEW01.npz'}" in capsys.readouterr().out
    pet = nib.load(str(case / "pet.nii.gz"))
    mask = nib.load(str(out / "NEW01_lesion_mask.nii.gz"))
    inst = nib.load(str(out / "NEW01_instances.nii.gz"))
    assert mask.shape == inst.shape == pet.shape
    assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
    np.testing.assert_array_equal(
        np.asarray(inst.dataobj),
        lesion_instances(
            np.asarray(mask.dataobj) > 0, 1e-3 * abs(np.linalg.det(pet.affine[:3, :3]))
        ),
    )
    assert not (out / ".partial").exists()
    feats = [load_case_features(out / f"fold_{k}" / "NEW01.npz") for k in (0, 1)]
    assert [f.meta["network"]["fold"] for f in feats] == [0, 1]
    assert all(f.meta["step_size"] == 1.0 for f in feats)
    # one set of lesions for every network; fold 1 is fold 0's copy: the same features
    np.testing.assert_array_equal(feats[0].lesion_ids, feats[1].lesion_ids)
    np.testing.assert_allclose(feats[0].organ_features, feats[1].organ_features, atol=1e-5)
    table = pd.read_csv(out / "NEW01_lesions.csv", dtype={"patient_id": str})
    assert len(table) == len(feats[0].lesion_ids) and set(table["patient_id"]) <= {"NEW01"}
    # a rerun of the same request (the CLI's step 1) skips the finished files
    cfg = dataclasses.replace(cfg, tile_step_size=1.0)
    before = (out / "fold_1" / "NEW01.npz").stat().st_mtime_ns
    extract_new_case_features(case, work, cfg, out)
    assert (out / "fold_1" / "NEW01.npz").stat().st_mtime_ns == before
    # over a given mask (here the reference): its components are the instances
    ref_out = tmp_path / "new_ref"
    files = extract_new_case_features(
        case, work, cfg, ref_out, lesions=cohort / "cases" / pid / "lesions.nii.gz"
    )
    ref = np.asarray(nib.load(str(cohort / "cases" / pid / "lesions.nii.gz")).dataobj)
    assert sorted(files) == [0, 1] and not (ref_out / "NEW01_lesion_mask.nii.gz").exists()
    ref_ids = (
        np.unique(ref[ref > 0])
        if ref.max() > 1
        else np.arange(1, 1 + lesion_instances(ref > 0, 1.0).max())
    )
    np.testing.assert_array_equal(load_case_features(files[1]).lesion_ids, ref_ids)
    # a rerun with another lesion source redoes everything: back to the ensemble
    extract_new_case_features(case, work, cfg, ref_out)
    assert (ref_out / "NEW01_lesion_mask.nii.gz").is_file()
    np.testing.assert_array_equal(load_case_features(files[0]).lesion_ids, feats[0].lesion_ids)
    np.testing.assert_array_equal(
        np.asarray(nib.load(str(ref_out / "NEW01_instances.nii.gz")).dataobj),
        np.asarray(inst.dataobj),
    )
    # a fold whose training has not finished is named, not silently left out
    (model_dir / "fold_2").mkdir()
    with pytest.raises(SegmentError, match=r"fold\(s\) \[2\] has not finished"):
        extract_new_case_features(case, work, cfg, tmp_path / "x")
    shutil.rmtree(model_dir / "fold_2")
    # a lesion map that is not a label map
    soft = tmp_path / "soft.nii.gz"
    save_nifti(soft, np.full(pet.shape, 0.5, np.float32), pet.affine, np.float32)
    with pytest.raises(SegmentError, match="expected a label map"):
        extract_new_case_features(case, work, cfg, tmp_path / "y", lesions=soft)
    for bad in (["--cohort", str(cohort)], []):
        args = parser.parse_args(["features", "--work", str(work), "--case", str(case), *bad])
        assert seg_cli.run(args) == 2
    assert "give --cohort or --case, not both" in capsys.readouterr().out
    shutil.rmtree(model_dir / "fold_1")


def test_segment_cli_step_option_reaches_the_configuration():
    from lamp.segmentation import cli as seg_cli
    from lamp.segmentation.nnunet import SegmentError

    parser = argparse.ArgumentParser()
    seg_cli.add_parser(parser.add_subparsers())
    base = ["--cohort", "c", "--work", "w"]
    assert seg_cli._config(parser.parse_args(["segment", "predict", *base])).tile_step_size == 0.5
    args = parser.parse_args(["segment", "predict", *base, "--step", "1"])
    assert seg_cli._config(args).tile_step_size == 1.0
    args = parser.parse_args(["features", *base, "--step", "0.75"])
    assert seg_cli._config(args).tile_step_size == 0.75
    for bad in ("0", "1.5"):
        args = parser.parse_args(["features", *base, "--step", bad])
        with pytest.raises(SegmentError, match="--step must be in"):
            seg_cli._config(args)


def test_train_fold_applies_the_schedule_and_resumes_from_the_latest_checkpoint(
    tmp_path, monkeypatch
):
    """The configuration's schedule reaches nnU-Net's trainer, and a checkpoint_latest.pth
    left by an interrupted run (saved every ``save_every`` epochs) is loaded first."""
    import nnunetv2.run.run_training as rt

    from lamp.segmentation.nnunet import SEG_CONFIGS, _folders, train_fold

    cfg = SEG_CONFIGS["tiny"]
    out = tmp_path / "fold_0"
    out.mkdir()
    (out / "checkpoint_latest.pth").write_bytes(b"x")
    pre = _folders(tmp_path)["preprocessed"] / "Dataset501_LAMPSynth"
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text("{}")

    class FakeTrainer:
        output_folder = str(out)
        save_every = 50
        loaded = None
        trained = False

        def load_checkpoint(self, path):
            self.loaded = path

        def run_training(self):
            self.trained = True

    fake = FakeTrainer()
    monkeypatch.setattr(rt, "get_trainer_from_args", lambda *a, **k: fake)
    assert train_fold(tmp_path, cfg, 0) == out
    assert fake.trained and fake.loaded == str(out / "checkpoint_latest.pth")
    assert (fake.save_every, fake.num_epochs, fake.num_iterations_per_epoch) == (2, 30, 20)
    assert fake.disable_mirroring
    assert json.loads((out / "lamp_segment_config.json").read_text())["tile_step_size"] == 0.5


def test_segment_cli_patch_size_option(tmp_path):
    from lamp.segmentation import cli as seg_cli
    from lamp.segmentation.nnunet import SegmentError

    parser = argparse.ArgumentParser()
    seg_cli.add_parser(parser.add_subparsers())
    base = ["segment", "train", "--cohort", "c", "--work", "w"]
    assert seg_cli._config(parser.parse_args(base)).patch_size == (32, 32, 32)
    cfg = seg_cli._config(parser.parse_args([*base, "--patch-size", "48"]))
    assert cfg.patch_size == (48, 48, 48) and cfg.num_epochs == 30
    for bad in ("36", "8", "-16"):
        with pytest.raises(SegmentError, match="--patch-size must be a multiple of 8"):
            seg_cli._config(parser.parse_args([*base, "--patch-size", bad]))
    with pytest.raises(SegmentError, match="--config tiny only"):
        seg_cli._config(parser.parse_args([*base, "--config", "full", "--patch-size", "48"]))


def test_train_fold_refuses_a_patch_size_other_than_the_trained_folds(tmp_path, monkeypatch):
    """One model folder holds one plans.json for all its folds: a fold on another patch
    size is refused with the file and the field named; the same size goes on."""
    import nnunetv2.run.run_training as rt

    from lamp.segmentation.nnunet import (
        SEG_CONFIGS,
        TINY_CONFIGURATION,
        SegmentError,
        _folders,
        results_folder,
        train_fold,
    )

    cfg = SEG_CONFIGS["tiny"]
    pre = _folders(tmp_path)["preprocessed"] / "Dataset501_LAMPSynth"
    pre.mkdir(parents=True)
    (pre / "nnUNetPlans.json").write_text("{}")
    model_dir = results_folder(tmp_path, cfg, plain=True)
    (model_dir / "fold_0").mkdir(parents=True)
    plans = {"configurations": {TINY_CONFIGURATION: {"patch_size": [32, 32, 32]}}}
    (model_dir / "plans.json").write_text(json.dumps(plans))
    out = model_dir / "fold_1"
    out.mkdir()

    class FakeTrainer:
        output_folder = str(out)
        trained = False

        def run_training(self):
            self.trained = True

    fake = FakeTrainer()
    monkeypatch.setattr(rt, "get_trainer_from_args", lambda *a, **k: fake)
    big = dataclasses.replace(cfg, patch_size=(48, 48, 48))
    # no fold trained yet: nothing to disagree with
    assert train_fold(tmp_path, big, 1, plain=True) == out and fake.trained
    fake.trained = False
    (model_dir / "fold_0" / "checkpoint_final.pth").write_bytes(b"x")
    field_named = r"plans\.json: configurations\.3d_lamp_tiny\.patch_size is \[32, 32, 32\]"
    with pytest.raises(SegmentError, match=field_named):
        train_fold(tmp_path, big, 1, plain=True)
    assert not fake.trained
    assert train_fold(tmp_path, cfg, 1, plain=True) == out and fake.trained
    # the LAMP network's folder is another model folder: not affected
    (results_folder(tmp_path, cfg, plain=False)).mkdir(parents=True)
    assert train_fold(tmp_path, big, 1, plain=False) == out

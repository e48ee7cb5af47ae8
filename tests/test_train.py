"""Training: flags, weighted loss, optimizer groups, sampler, checkpoints, resume (torchrun, kill -9 and bad
inputs: test_train_safety.py)."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from egoexor.config import ConfigError, parse_train_args
from egoexor.model.build import NON_LORA_FILE
from egoexor.model.egoexor_llava import next_token_loss
from egoexor.train import (
    EARLIER_RUN,
    build_training,
    length_grouped_indices,
    main,
    resume_checkpoint,
    token_weights,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")

#: The reference README's training command (paths replaced), flag for flag.
REFERENCE_COMMAND = """--lora_enable True --bits 4 --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5
--model_name_or_path liuhaotian/llava-v1.5-7b --version v1 --dataset_name egoexor --data_path DATA --hdf5_path H5
--token_weight_path FREQS --vision_tower openai/clip-vit-large-patch14-336 --mm_projector_type mlp2x_gelu
--mm_vision_select_layer -2 --mm_use_im_start_end False --mm_use_im_patch_token False --image_aspect_ratio pad
--group_by_modality_length True --bf16 True --output_dir OUT --num_train_epochs 1 --per_device_train_batch_size 2
--per_device_eval_batch_size 2 --gradient_accumulation_steps 8 --evaluation_strategy no --save_strategy steps
--save_steps 1 --learning_rate 2e-5 --max_grad_norm 0.1 --weight_decay 0. --warmup_ratio 0.03
--lr_scheduler_type cosine --logging_steps 1 --tf32 True --model_max_length 2048 --gradient_checkpointing True
--dataloader_num_workers 4 --lazy_preprocess True --report_to none --run_name llava-v1.5-7b-task-lora
--mv_type learned --unfreeze_n_vision_tower_layers 12 --multimodal_drop_prop 0.50 --do_augment False""".split()


def test_every_reference_flag_parses_with_its_meaning(tmp_path):
    setup = parse_train_args(REFERENCE_COMMAND)
    model, data, train, trainer = setup.model, setup.data, setup.train, setup.trainer
    assert (model.bits, model.lora_r, model.lora_alpha, model.lora_enable) == (4, 128, 256, True)
    assert model.model_name_or_path == "liuhaotian/llava-v1.5-7b" and model.unfreeze_n_vision_tower_layers == 12
    assert (train.data_path, train.hdf5_path, train.token_weight_path) == ("DATA", "H5", "FREQS")
    assert train.mm_projector_lr == 2e-5 and train.group_by_modality_length
    assert data.modality_dropout == 0.5 and data.model_max_length == 2048
    assert trainer.gradient_accumulation_steps == 8 and trainer.max_grad_norm == 0.1 and trainer.bf16
    assert trainer.eval_strategy == "no" and trainer.lr_scheduler_type == "cosine" and trainer.save_steps == 1
    assert trainer.warmup_steps == 0.03
    warned = " ".join(setup.warnings)
    for flag in (
        "version",
        "dataset_name",
        "mm_use_im_start_end",
        "image_aspect_ratio",
        "lazy_preprocess",
        "mv_type",
        "do_augment",
    ):
        assert f"--{flag} has no effect here" in warned


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lora_rr", "8"], "unknown flag.*--lora_rr"),
        (["--learning_rat", "1e-3"], "unknown flag.*--learning_rat"),
        (["--bits", "four"], "--bits: invalid choice: 'four'"),
        (["--bits", "3"], r"--bits: invalid choice: '3' \(choose from 4, 8, 16\)"),
        (["--mv_type", "mean"], "--mv_type mean: not supported"),
        (["--preset", "big"], "--preset: invalid choice: 'big'"),
        (["--llm_config", "[1]"], "--llm_config: not a JSON object"),
        (["--config", "missing.yaml"], "no such config file"),
    ],
)
def test_bad_flags_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_train_args(["--config", TINY, *argv])


def test_cli_exits_2_before_loading_anything(capsys, tmp_path):
    assert main(["--config", TINY, "--data_path", str(tmp_path / "none.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("egoexor.train: error: --data_path") and "no such file" in error


def test_weighted_loss_equals_a_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[-100, 1, 3, 2], [-100, -100, 4, 1]])
    weights = torch.tensor([0.5, 1.0, 0.25, 2.0, 1.5])
    expected_num, expected_den = 0.0, 0.0
    for b in range(2):
        for t in range(3):
            target = int(labels[b, t + 1])
            if target == -100:
                continue
            nll = -torch.log_softmax(logits[b, t], -1)[target]
            expected_num += weights[target] * nll
            expected_den += weights[target]
    assert torch.allclose(next_token_loss(logits, labels, weights), expected_num / expected_den)
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 5), labels[:, 1:].reshape(-1))
    assert torch.allclose(next_token_loss(logits, labels, None), plain)


def test_token_weights_from_a_frequency_file(tmp_path, tokenizer):
    pieces = tokenizer.tokenize("<SG> patient")
    counts = {piece: 10**i for i, piece in enumerate(pieces)}
    path = tmp_path / "freqs.json"
    path.write_text(json.dumps(counts))
    weights = token_weights(path, tokenizer, len(tokenizer) + 2)
    ids = tokenizer.convert_tokens_to_ids(pieces)
    for i, count in zip(ids, counts.values(), strict=True):
        assert weights[i] == pytest.approx(1 / (math.log(count) + 1))
    floor = min(1 / (math.log(c) + 1) for c in counts.values()) / 100
    assert weights[tokenizer.eos_token_id] == pytest.approx(floor)  # EOS is never counted
    assert weights[-1] == pytest.approx(floor)
    path.write_text(json.dumps({"no-such-piece-xyz": 3}))
    with pytest.raises(ConfigError, match="unknown to the tokenizer"):
        token_weights(path, tokenizer, len(tokenizer))


def test_length_grouped_order_is_a_balanced_permutation():
    lengths = [5, 50, 7, 30, 8, 9, 60, 2, 40, 1, 11, 12]
    order = length_grouped_indices(lengths, batch_size=2, world_size=2, generator=torch.Generator().manual_seed(0))
    assert sorted(order) == list(range(12))
    for start in range(0, 12, 4):  # each megabatch: 2 chunks of 2, longest items spread over chunks
        chunk_a, chunk_b = order[start : start + 2], order[start + 2 : start + 4]
        tops = sorted(order[start : start + 4], key=lambda i: lengths[i], reverse=True)[:2]
        assert tops[0] in chunk_a + chunk_b and not (set(tops) <= set(chunk_a) or set(tops) <= set(chunk_b))


@pytest.fixture(scope="module")
def tiny_train_files(sample_files, merged_file):
    return ["--config", TINY, "--data_path", str(sample_files["train"]), "--hdf5_path", str(merged_file)]


def test_optimizer_groups_and_learning_rates(tiny_train_files, tmp_path):
    setup = parse_train_args(
        [
            *tiny_train_files,
            "--output_dir",
            str(tmp_path),
            "--learning_rate",
            "1e-3",
            "--mm_projector_lr",
            "1e-4",
            "--weight_decay",
            "0.1",
        ]
    )
    trainer = build_training(setup)
    optimizer = trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        group_names = [names[id(p)] for p in group["params"]]
        projector = {"mm_projector" in n for n in group_names}
        assert len(projector) == 1  # groups never mix projector and other weights
        assert group["lr"] == (1e-4 if projector.pop() else 1e-3)
        biases = {n.endswith("bias") for n in group_names}
        assert group["weight_decay"] == (0.0 if True in biases else 0.1)
        seen.update(group_names)
    assert seen == {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert len(optimizer.param_groups) == 4


def test_modality_dropout_flags(tiny_train_files, tmp_path):
    base = [*tiny_train_files, "--output_dir", str(tmp_path), "--multimodal_drop_prop", "0.4"]
    dataset = build_training(parse_train_args(base)).train_dataset
    assert dataset.config.modality_dropout == 0.4
    kept = sum(dataset[i]["point_cloud"] is not None for i in range(80)) / 80
    assert 0.45 < kept < 0.75
    inert = build_training(parse_train_args([*base, "--do_multimodal_augment", "False"])).train_dataset
    assert inert.config.modality_dropout == 0.0  # the reference's published run


def _train(args):
    trainer = build_training(parse_train_args(args))
    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer.args))
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}, trainer


def test_resume_gives_the_same_weights_as_training_straight(tiny_train_files, tmp_path):
    common = [
        *tiny_train_files,
        "--max_steps",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--learning_rate",
        "5e-3",
    ]
    straight, _ = _train([*common, "--output_dir", str(tmp_path / "a")])
    checkpoint = tmp_path / "a" / "checkpoint-2"
    for name in (
        "adapter_model.safetensors",
        NON_LORA_FILE,
        "egoexor_config.json",
        "tokenizer.json",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
    ):
        assert (checkpoint / name).is_file(), name
    saved = load_file(checkpoint / NON_LORA_FILE)
    assert any(k.startswith("image_pooler.point_transformer.") and "running_mean" in k for k in saved)
    assert "mm_projector.0.weight" in saved and not any("lora_" in k for k in saved)
    resumed, _ = _train([*common, "--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", str(checkpoint)])
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.allclose(straight[name], resumed[name], atol=1e-6), name
    # and the run did move the weights, so the comparison means something; it replaces the first run, whose
    # checkpoints --overwrite_output_dir keeps aside until this one has saved its model
    fresh, trainer = _train(
        [*common, "--output_dir", str(tmp_path / "a"), "--max_steps", "2", "--overwrite_output_dir"]
    )
    assert any(not torch.allclose(straight[n], fresh[n]) for n in straight)
    assert sorted(p.name for p in (tmp_path / "a").glob("*checkpoint*")) == ["checkpoint-2"]
    assert sorted(p.name for p in (tmp_path / "a" / EARLIER_RUN).iterdir()) == ["checkpoint-2", "checkpoint-4"]
    trainer.save_final_model()
    assert not (tmp_path / "a" / EARLIER_RUN).exists() and (tmp_path / "a" / NON_LORA_FILE).is_file()


@pytest.fixture(scope="module")
def trained_checkpoint(tiny_model_config, tiny_data_config, tmp_path_factory):
    """A tiny checkpoint whose trained weights (LoRA and non-LoRA) are random, unlike a fresh model's."""
    from dataclasses import replace

    from egoexor.config import checkpoint_config
    from egoexor.model.build import build_model, save_checkpoint

    torch.manual_seed(5)
    model = build_model(tiny_model_config)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    folder = tmp_path_factory.mktemp("init") / "checkpoint-7"
    save_checkpoint(model, folder, checkpoint_config(tiny_model_config, replace(tiny_data_config, audio_encoder=None)))
    return folder, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_init_from_starts_from_the_checkpoints_weights(tiny_train_files, trained_checkpoint, tmp_path):
    folder, saved = trained_checkpoint
    args = [*tiny_train_files, "--output_dir", str(tmp_path / "out"), "--seed", "1", "--init_from", str(folder)]
    started = build_training(parse_train_args(args)).model
    trainable = {n: p for n, p in started.named_parameters() if p.requires_grad}
    assert trainable.keys() == saved.keys() and any("lora_" in n for n in saved)
    # the saved weights carry added noise: no fresh model could equal them by chance
    assert all(torch.equal(trainable[n], saved[n]) for n in saved)


def test_init_from_errors_are_one_line_and_write_nothing(tiny_train_files, trained_checkpoint, tmp_path, capsys):
    folder, _ = trained_checkpoint
    released = tmp_path / "released"
    released.mkdir()
    (released / "non_lora_trainables.bin").write_bytes(b"")
    other = ["--encoder_hidden", "16"]  # the checkpoint's fusion encoders are 32 wide
    cases = [
        ([str(tmp_path / "missing")], "no such folder"),
        ([str(released)], "a released reference folder; convert it first: python -m egoexor.convert_reference"),
        ([str(folder), *other], "cannot load its weights"),
        ([str(folder), "--output_dir", str(folder.parent)], "holds the --init_from file"),
    ]
    for extra, message in cases:
        argv = [*tiny_train_files, "--output_dir", str(tmp_path / "out"), "--init_from", *extra]
        assert main(argv) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and err[0].startswith("egoexor.train: error: --"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--eval_strategy", "steps"], "--eval_strategy steps needs validation samples: pass --eval_data_path"),
        (["--eval_strategy", "epoch"], "--eval_strategy epoch needs validation samples: pass --eval_data_path"),
        (
            ["--eval_strategy", "steps", "--save_strategy", "steps", "--load_best_model_at_end", "True"],
            "--eval_strategy steps and --load_best_model_at_end need validation samples",
        ),
        (
            ["--eval_data_path", "VALIDATION", "--eval_generate_samples", "2"],
            "--eval_generate_samples: nothing evaluates",
        ),
        (["--eval_data_path", "VALIDATION", "--load_best_model_at_end"], "--load_best_model_at_end: nothing evaluates"),
        (["--load_best_model_at_end"], "--load_best_model_at_end needs validation samples"),
        (["--eval_strategy", "steps", "--eval_data_path", "MISSING"], "--eval_data_path MISSING: no such file"),
        (
            ["--eval_strategy", "steps", "--eval_data_path", "VALIDATION", "--metric_for_best_model", "eval_macro_f1"],
            "--metric_for_best_model eval_macro_f1: evaluation logs eval_loss (eval_macro_f1 needs "
            "--eval_generate_samples)",
        ),
    ],
)
def test_evaluation_flags_are_one_line_before_the_model_loads(
    extra, message, tiny_train_files, sample_files, tmp_path, capsys, monkeypatch
):
    import egoexor.model.build

    def no_model(*_):
        raise AssertionError("the model was built")

    monkeypatch.setattr(egoexor.model.build, "build_model", no_model)
    paths = {"VALIDATION": str(sample_files["validation"]), "MISSING": str(tmp_path / "missing.json")}
    extra = [paths.get(value, value) for value in extra]
    assert main([*tiny_train_files, "--output_dir", str(tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("egoexor.train: error: --"), err
    assert message.replace("MISSING", paths["MISSING"]) in err[0], err
    assert not (tmp_path / "out").exists()


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {**load_file(folder / "adapter_model.safetensors"), **load_file(folder / NON_LORA_FILE)}


def test_validation_loss_and_the_best_checkpoint_is_the_final_model(tiny_train_files, sample_files, tmp_path):
    from egoexor.data.make_samples import token_freqs_file_name
    from egoexor.train import train

    out = tmp_path / "run"
    freqs = sample_files["train"].parent / token_freqs_file_name("train", 2)
    args = [
        *tiny_train_files,
        "--eval_data_path",
        str(sample_files["validation"]),
        "--token_weight_path",
        str(freqs),
        "--output_dir",
        str(out),
        "--max_steps",
        "6",
        "--per_device_train_batch_size",
        "2",
        "--learning_rate",
        "3e-2",
        "--lr_scheduler_type",
        "constant",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--load_best_model_at_end",
        "--metric_for_best_model",
        "eval_loss",
    ]
    trainer = train(parse_train_args(args))
    losses = {entry["step"]: entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry}
    assert sorted(losses) == [2, 4, 6] and all(math.isfinite(loss) for loss in losses.values())
    best = min(losses, key=losses.get)
    assert trainer.state.best_model_checkpoint == str(out / f"checkpoint-{best}")
    saved = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert saved["best_model_checkpoint"] == str(out / f"checkpoint-{best}")  # its final name, not the staging one
    final, checkpoints = _weights(out), {step: _weights(out / f"checkpoint-{step}") for step in losses}
    assert final.keys() == checkpoints[best].keys()
    assert all(torch.equal(final[name], checkpoints[best][name]) for name in final)
    for step in set(losses) - {best}:  # the checkpoints differ, so the equality above picked one of them
        assert any(not torch.equal(final[name], checkpoints[step][name]) for name in final), step
    print(f"eval_loss by step {losses}: kept checkpoint-{best}")
    assert best != 6, "the last checkpoint is the best: the test would not show the best one loaded"


def test_generated_macro_f1_on_a_fixed_validation_subset(tiny_train_files, sample_files, tmp_path):
    from egoexor.data.samples import load_samples

    args = [
        *tiny_train_files,
        "--eval_data_path",
        str(sample_files["validation"]),
        "--output_dir",
        str(tmp_path / "run"),
        "--max_steps",
        "1",
        "--eval_strategy",
        "steps",
        "--eval_steps",
        "1",
        "--eval_generate_samples",
        "2",
    ]
    trainer = build_training(parse_train_args(args))
    validation = load_samples(sample_files["validation"])
    subset = [sample.id for sample in trainer.generation_dataset.samples]
    assert subset == [validation[0].id, validation[len(validation) // 2].id]  # spread over the file, every time
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if "eval_loss" in entry]
    assert len(evaluations) == 1 and 0.0 <= evaluations[0]["eval_macro_f1"] <= 1.0
    assert evaluations[0]["eval_macro_f1"] == trainer.generated_macro_f1()  # greedy: the same answers again

import json
import os

import pytest

from ssl_jax import report


def make_workdir(root, name, results, config=None, metrics=()):
    workdir = root / name
    workdir.mkdir()
    (workdir / "results.json").write_text(json.dumps(results))
    if config is not None:
        (workdir / "config.json").write_text(json.dumps(config))
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    return str(workdir)


CONFIG = {"method": "byol", "dataset": "demo", "model": {"name": "resnet18", "width": 0.125}}
RESULTS = {
    "step": 400,
    "train_seconds": 392.4,
    "knn_top1": 0.3085,
    "linear_top1": 0.318,
    "random_init_knn_top1": 0.254,
    "random_init_linear_top1": 0.27,
    "eval_seconds": 12.0,
}


def test_one_row_per_encoder_and_protocol_with_the_run_s_facts(tmp_path):
    metrics = [{"step": 1, "epoch": 0.03, "loss": 4.0}, {"step": 400, "epoch": 10.24, "loss": 1.0},
               {"step": 400, "knn_top1": 0.3085}]  # fmt: skip
    workdir = make_workdir(tmp_path, "byol_demo", RESULTS, CONFIG, metrics)
    rows = report.rows_of(workdir)
    assert [(r["encoder"], r["protocol"], r["top1"]) for r in rows] == [
        ("trained", "knn", 0.3085),
        ("trained", "linear", 0.318),
        ("random init", "knn", 0.254),
        ("random init", "linear", 0.27),
    ]
    table = report.markdown(rows)
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[2] == (
        "| byol_demo | byol | resnet18 x0.125 | demo | 10.24 | trained | knn | 100% | 30.9 | n/a "
        "| 6m32s |"
    )


def test_top5_and_label_fraction_are_reported_when_present(tmp_path):
    results = {"finetune_top1": 0.5, "finetune_top5": 0.9, "label_fraction": 0.01,
               "train_seconds": 4000}  # fmt: skip
    workdir = make_workdir(tmp_path, "ft", results, CONFIG)
    (row,) = report.rows_of(workdir)
    assert (row["protocol"], row["top5"], row["labels"]) == ("finetune", 0.9, "1%")
    assert "| finetune | 1% | 50.0 | 90.0 | 1h06m |" in report.markdown([row])


def test_fine_tuning_and_distillation_rows_name_the_encoder_they_started_from(tmp_path):
    config = {"method": "supervised", "dataset": "demo",
              "model": {"name": "resnet18", "width": 0.125}}  # fmt: skip
    tuned = {"protocol": "finetune", "label_fraction": 0.1, "method": "simclr", "encoder":
             "trained", "pretrain_epochs": 6.41, "finetune_top1": 0.36, "finetune_top5": 0.86,
             "train_seconds": 202.0, "eval_seconds": 5.0}  # fmt: skip
    scratch = {**tuned, "method": "supervised", "encoder": "random init", "pretrain_epochs": 0}
    student = {**tuned, "method": "distill", "encoder": "student", "label_fraction": 1.0,
               "teacher_top1": 0.36, "teacher_label_fraction": 0.1}  # fmt: skip
    student["distill_top1"] = student.pop("finetune_top1")
    v2 = {**tuned, "finetune_from": "projector_layer_1"}  # SimCLR v2's fine-tuning
    runs = (("ft", tuned), ("sup", scratch), ("dist", student), ("v2", v2))
    rows = [row for name, results in runs
            for row in report.rows_of(make_workdir(tmp_path, name, results, config))]  # fmt: skip
    lines = report.markdown(rows).splitlines()[2:]
    assert lines == [
        "| ft | simclr | resnet18 x0.125 | demo | 6.41 | trained | finetune | 10% | 36.0 | 86.0 "
        "| 3m22s |",
        "| sup | supervised | resnet18 x0.125 | demo | 0.00 | random init | finetune | 10% | 36.0 "
        "| 86.0 | 3m22s |",
        "| dist | distill | resnet18 x0.125 | demo | 6.41 | student | distill | 10% (teacher's) "
        "| 36.0 | n/a | 3m22s |",
        "| v2 | simclr | resnet18 x0.125 | demo | 6.41 | trained | finetune from projector_layer_1 "
        "| 10% | 36.0 | 86.0 | 3m22s |",
    ]


def test_evaluation_workdir_names_the_encoder_it_evaluated(tmp_path):
    """An evaluation run (configs/linear_eval.py, fewshot.py): method, backbone and epochs come
    from the encoder it evaluated; few-shot rows say how many labels and the spread over the
    draws; per-l2 dicts are no rows."""
    results = {"task": "evaluate", "encoder": "random init", "method": "simclr",
               "backbone": "resnet18 x0.125", "pretrain_epochs": 6.41, "label_fraction": 1.0,
               "frozen_features_top1": 0.4, "frozen_features_top5": 0.9,
               "frozen_features_holdout_top1_by_l2": {"0.01": 0.41},
               "fewshot_5shot_top1": 0.2, "fewshot_5shot_top1_std": 0.01,
               "fewshot_5shot_labels": "5/class", "eval_seconds": 61.0}  # fmt: skip
    config = {"task": "evaluate", "dataset": "demo", "protocols": ["frozen_features", "fewshot"]}
    rows = report.rows_of(make_workdir(tmp_path, "ev", results, config))
    lines = report.markdown(rows).splitlines()[2:]
    assert lines == [
        "| ev | simclr | resnet18 x0.125 | demo | 6.41 | random init | fewshot_5shot | 5/class "
        "| 20.0 ± 1.0 | n/a | 1m01s |",
        "| ev | simclr | resnet18 x0.125 | demo | 6.41 | random init | frozen_features | 100% "
        "| 40.0 | 90.0 | 1m01s |",
    ]


def test_unlabeled_run_says_why_it_has_no_accuracy(tmp_path):
    results = {"step": 4, "train_seconds": 3.0, "skipped": "the dataset has no labels"}
    (row,) = report.rows_of(make_workdir(tmp_path, "flat", results))
    assert row["protocol"] == "none (the dataset has no labels)" and row["top1"] is None
    assert "| n/a | n/a |" in report.markdown([row])  # no config.json: method and more unknown


def test_command_line_prints_and_writes_the_table(tmp_path, capsys):
    a = make_workdir(tmp_path, "a", RESULTS, CONFIG)
    b = make_workdir(tmp_path, "b", {"knn_top1": 0.2}, CONFIG)
    out = tmp_path / "table.md"
    report.main([a, b, "--output", str(out)])
    printed = capsys.readouterr().out
    assert printed == out.read_text() and len(printed.splitlines()) == 2 + 4 + 1


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "is not a directory"),
        ("unfinished", "has no results.json: the run has not finished"),
        ("corrupt", "results.json is not valid JSON"),
    ],
)
def test_bad_workdirs_are_one_line_errors(tmp_path, capsys, case, message):
    workdir = tmp_path / case
    if case != "missing":
        workdir.mkdir()
    if case == "corrupt":
        (workdir / "results.json").write_text('{"knn_top1": 0.')
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(workdir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    workdir = make_workdir(tmp_path, "a", RESULTS, CONFIG)
    with pytest.raises(SystemExit):
        report.main([workdir, "--output", os.path.join(str(tmp_path), "no", "such", "t.md")])
    assert "cannot write" in capsys.readouterr().err

"""`python -m fs2mini.plot`: curves of several runs from their metrics.jsonl, against step and wall time."""

import json

import pytest

from fs2mini.plot import draw, main, read_records


def write_run(run_dir, lr_scale, cut_last_line=False):
    run_dir.mkdir(parents=True)
    records = [{"step": 0, "split": "valid", "loss": 9.0, "elapsed_s": 0.0}]
    for step in range(10, 101, 10):
        records.append({"step": step, "split": "train", "loss": 9.0 - step / 20, "lr": lr_scale * step, "elapsed_s": step * 1.5})
        if step % 50 == 0:
            records.append({"step": step, "split": "valid", "loss": 8.5 - step / 25, "bleu": step / 10, "elapsed_s": step * 1.6})
    text = "".join(json.dumps(r) + "\n" for r in records)
    (run_dir / "metrics.jsonl").write_text(text + ('{"step": 110, "spl' if cut_last_line else ""))
    return run_dir


def test_two_runs_on_one_figure_against_step_and_minutes(tmp_path, capsys):
    a, b = write_run(tmp_path / "a", 1e-5), write_run(tmp_path / "b", 2e-5, cut_last_line=True)
    main([str(a), str(b), "-o", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote" in capsys.readouterr().out

    fig = draw([read_records(a), read_records(b)], ["a", "b"])
    loss_by_step, bleu_by_step, lr_by_step = fig.axes[:3]
    assert len(loss_by_step.lines) == 4  # train + valid, two runs
    assert [line.get_label() for line in loss_by_step.lines] == ["a (train)", "a (valid)", "b (train)", "b (valid)"]
    assert list(bleu_by_step.lines[0].get_xdata()) == [50, 100] and list(bleu_by_step.lines[0].get_ydata()) == [5.0, 10.0]
    assert list(lr_by_step.lines[1].get_ydata())[-1] == pytest.approx(2e-3)
    loss_by_time = fig.axes[3]
    assert list(loss_by_time.lines[0].get_xdata())[-1] == pytest.approx(100 * 1.5 / 60)  # minutes
    assert len(read_records(b)) == len(read_records(a))  # the line cut short by a crash is skipped


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "error: run directory {tmp}/missing does not exist"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "error: cannot read {tmp}/empty/metrics.jsonl"),
])
def test_bad_run_directories_are_one_error_line(make, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(make(tmp_path)), "-o", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message.format(tmp=tmp_path)), err


@pytest.mark.parametrize("name", ["figures", "out.d"])  # no suffix, or an existing directory
def test_an_output_that_is_not_a_figure_file_is_one_error_line(name, tmp_path, capsys):
    run = write_run(tmp_path / "a", 1e-5)
    if name == "out.d":
        (tmp_path / name).mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "-o", str(tmp_path / name)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: -o {tmp_path / name}: expected a file name ending in .png, .pdf or .svg")
    # the suggestion: a file inside a directory, else the name with a suffix (not figures/curves.png)
    suggested = tmp_path / "out.d" / "curves.png" if name == "out.d" else tmp_path / "figures.png"
    assert err[0].endswith(f"e.g. {suggested}"), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"a", name} if name == "out.d" else {"a"})  # no DIR.png


@pytest.mark.parametrize("lines", [
    ['{"step": 1, "split": "train"}', '{"step": 2, "split": "valid", "note": "x"}'],  # was a ValueError traceback
    ['{"step": 1, "split": "train", "loss": NaN, "lr": NaN}', '{"step": 2, "split": "valid", "bleu": Infinity}'],  # was an empty figure
    ['{"step": 1, "split": "train", "loss": 1e308}', '{"step": 2, "split": "train", "loss": -1e308}'],  # was a traceback
    ['{"step": true, "split": "train", "loss": 1.0}', '{"step": 1' + "0" * 400 + ', "split": "train", "loss": 1.0}'],
])
def test_records_with_nothing_to_draw_are_one_error_line_and_no_figure(lines, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        main([str(run), "-o", str(tmp_path / "curves.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: {run / 'metrics.jsonl'} has ")
    assert ("has nothing to draw: none of its 2 train or valid records holds a number to plot" in err[0]
            or "has no train or valid records yet" in err[0]), err
    assert not (tmp_path / "curves.png").exists()


def test_points_that_cannot_be_drawn_are_left_out_of_the_curves(tmp_path):
    run = write_run(tmp_path / "a", 1e-5)
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 110, "split": "train", "loss": NaN, "lr": Infinity, "elapsed_s": 1e308}\n')
    loss_by_step, _, lr_by_step, loss_by_time = draw([read_records(run)], ["a"]).axes[:4]
    assert list(loss_by_step.lines[0].get_xdata())[-1] == 100 and list(lr_by_step.lines[0].get_xdata())[-1] == 100
    assert len(loss_by_time.lines[0].get_xdata()) == 10

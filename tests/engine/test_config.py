"""Configuration: what loads, and errors that name the file, the line, the key and the fix."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_inspector.config import FolderSourceConfig, load_config
from edge_inspector.errors import ConfigError

GOOD = """\
stations:
  - id: line1_cam1
    name: Line 1 camera 1
    source: {type: folder, path: frames}
    model: {path: models/best.onnx, imgsz: 320}
    defects:
      scratch: 0.4
      dent: {confidence: 0.6}
    roi: [[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]]
    masks: [[[0, 0], [0.1, 0], [0.1, 0.1]]]
    min_box_area: 0.001
    debounce: {n: 3, m: 5}
    fps: 2
  - id: line1_cam2
    name: Line 1 camera 2
    mode: triggered
    source: {type: http_snapshot, url: "http://cam.local/snap.jpg", username: u, password: p}
    model: {path: /opt/models/best.pt}
    defects: {crack: 0.5}
"""


def test_good_config_loads_with_paths_relative_to_the_file(
    write_config: Callable[[str], Path], tmp_path: Path
) -> None:
    config = load_config(write_config(GOOD))
    first, second = config.stations
    assert isinstance(first.source, FolderSourceConfig)
    assert first.source.path == tmp_path / "frames"
    assert first.model.path == tmp_path / "models" / "best.onnx"
    assert second.model.path == Path("/opt/models/best.pt")
    assert first.defects["scratch"].confidence == 0.4
    assert first.defects["dent"].confidence == 0.6
    assert first.min_confidence == 0.4
    assert first.debounce.n == 3
    assert second.mode == "triggered"
    assert config.station("line1_cam2") is second


def _problems(write_config: Callable[[str], Path], text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(text))
    return list(info.value.problems)


def test_missing_key_names_file_line_and_key(write_config: Callable[[str], Path]) -> None:
    text = GOOD.replace("    model: {path: models/best.onnx, imgsz: 320}\n", "")
    [problem] = _problems(write_config, text)
    assert problem.endswith("config.yaml:2: stations[0].model: required key is missing")


def test_wrong_value_names_what_was_expected_and_what_was_given(
    write_config: Callable[[str], Path],
) -> None:
    [problem] = _problems(
        write_config, GOOD.replace("debounce: {n: 3, m: 5}", "debounce: {n: 0, m: 5}")
    )
    assert "config.yaml:12: stations[0].debounce.n:" in problem
    assert "greater than or equal to 1" in problem
    assert "(got 0)" in problem


def test_n_greater_than_m_is_refused(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("{n: 3, m: 5}", "{n: 6, m: 5}"))
    assert "stations[0].debounce" in problem
    assert "n (6) must not be greater than m (5)" in problem


def test_misspelt_key_is_refused(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("min_box_area", "min_box_aera"))
    assert "stations[0].min_box_aera: unknown key" in problem


def test_unknown_source_type_lists_the_known_ones(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("type: folder", "type: webcam"))
    assert "stations[0].source" in problem
    assert "mjpeg" in problem
    assert "rtsp" in problem


def test_source_error_path_does_not_show_the_union_tag(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace('"http://cam.local/snap.jpg"', '"ftp://x"'))
    assert "stations[1].source.url:" in problem


def test_roi_outside_the_frame_is_refused(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("[0.9, 0.9]", "[1.5, 0.9]"))
    assert "stations[0].roi[2][0]" in problem
    assert "less than or equal to 1" in problem


def test_duplicate_station_ids_are_refused(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("line1_cam2", "line1_cam1"))
    assert "station id 'line1_cam1' is used more than once" in problem


def test_every_problem_is_reported_at_once(write_config: Callable[[str], Path]) -> None:
    text = GOOD.replace("fps: 2", "fps: -1").replace("crack: 0.5", "crack: 5")
    problems = _problems(write_config, text)
    assert len(problems) == 2
    assert any("stations[0].fps" in p for p in problems)
    assert any("stations[1].defects.crack.confidence" in p for p in problems)


def test_yaml_syntax_error_names_line_and_column(write_config: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml:3:\d+: not valid YAML"):
        load_config(write_config("stations:\n  - id: a\n    name: [unclosed\n"))


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"])
def test_a_file_that_is_not_a_mapping_is_refused(
    write_config: Callable[[str], Path], text: str
) -> None:
    with pytest.raises(ConfigError, match="expected a mapping with a `stations` list"):
        load_config(write_config(text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "nope.yaml")


def test_station_id_must_be_usable_in_topics(write_config: Callable[[str], Path]) -> None:
    [problem] = _problems(write_config, GOOD.replace("id: line1_cam1", "id: Line 1/cam"))
    assert "stations[0].id" in problem


def test_check_command_exits_2_with_the_problems_on_stderr(
    write_config: Callable[[str], Path],
) -> None:
    path = write_config(GOOD.replace("{n: 3, m: 5}", "{n: 6, m: 5}"))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_inspector.cli", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "stations[0].debounce" in proc.stderr
    assert proc.stdout == ""


VLM = (
    GOOD
    + """\
vlm:
  host: http://gpu-box:11434
  actions:
    - name: stop_line
      description: Stop the line
      parameters:
        properties:
          reason: {type: string, maxLength: 100}
          minutes: {type: integer, minimum: 1, maximum: 60}
        required: [reason]
      target: {type: mqtt, topic: plant/line1/stop}
      confirm: true
    - name: notify
      description: Tell the PLC
      target: {type: webhook, url: "http://plc.local/hook"}
  auto_actions:
    - {action: stop_line, classes: [crack], min_severity: critical, arguments: {reason: crack}}
manuals: {dir: manuals}
"""
)


def test_vlm_actions_and_manuals_load(write_config: Callable[[str], Path], tmp_path: Path) -> None:
    config = load_config(write_config(VLM))
    assert config.vlm.enabled and config.vlm.model == "qwen2.5vl:7b"
    stop = config.vlm.action("stop_line")
    assert stop is not None and stop.confirm
    assert stop.parameters["additionalProperties"] is False
    assert stop.rate_limit.calls == 1  # the safe default: once a minute
    assert config.manuals.dir == tmp_path / "manuals"
    assert config.manuals_index == config.store.path / "manuals.sqlite3"
    assert not load_config(write_config(GOOD, "novlm.yaml")).vlm.enabled


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            ("reason: {type: string, maxLength: 100}", "reason: {type: object}"),
            "vlm.actions[0].parameters: property 'reason': type must be one of",
        ),
        (
            ("reason: {type: string, maxLength: 100}", "reason: {type: string, format: email}"),
            "unsupported keywords format",
        ),
        (("required: [reason]", "required: [why]"), "required names undeclared properties: why"),
        (("- name: notify", "- name: search_manual"), "'search_manual' is a built-in tool"),
        (("- name: notify", "- name: stop_line"), "action names used more than once: stop_line"),
        (("{action: stop_line,", "{action: halt,"), "auto_actions names 'halt'"),
        (("topic: plant/line1/stop", "topic: plant/+/stop"), "vlm.actions[0].target.topic"),
        (
            ('type: webhook, url: "http://plc.local/hook"', "type: service, service: stop"),
            "vlm.actions[1].target.service",
        ),
        (("host: http://gpu-box:11434", "host: gpu box"), "vlm.host"),
        (("type: mqtt, topic", "type: http, topic"), "unknown type 'http'; expected one of mqtt"),
    ],
)
def test_vlm_mistakes_are_named(
    write_config: Callable[[str], Path], change: tuple[str, str], expected: str
) -> None:
    text = VLM.replace(*change)
    assert text != VLM
    with pytest.raises(ConfigError) as err:
        load_config(write_config(text))
    assert expected in str(err.value)


def test_a_station_naming_an_undeclared_action_is_refused(
    write_config: Callable[[str], Path],
) -> None:
    text = VLM.replace(
        "    defects: {crack: 0.5}\n", "    defects: {crack: 0.5}\n    actions: [halt]\n"
    )
    with pytest.raises(
        ConfigError, match=r"station line1_cam2 names actions not in vlm.actions: halt"
    ):
        load_config(write_config(text))

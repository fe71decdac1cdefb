"""Tests for asgictl.logs: default output, colors, levels, user log configs, access fields, reopening."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import Collect

from asgictl import logs
from asgictl.logs import (
    ACCESS_LOGGER,
    ACCESS_MESSAGE_DISCONNECTED,
    ERROR_LOGGER,
    TRACE_LEVEL,
    AccessFormatter,
    DefaultFormatter,
    JsonFormatter,
    configure_logging,
    reopen_log_files,
)

ESC = "\033["
GREEN, YELLOW, RED, BRIGHT_RED, BOLD, RESET = (
    "\033[32m",
    "\033[33m",
    "\033[31m",
    "\033[91m",
    "\033[1m",
    "\033[0m",
)
ACCESS_ARGS = ("127.0.0.1:5000", "GET", "/a?b=1", "1.1", 200, 1.234)
ACCESS_MSG = '%s - "%s %s HTTP/%s" %d %.1fms'
assert ACCESS_MSG == logs.ACCESS_MESSAGE


@dataclass
class Opts:
    log_config: str | None = None
    log_level: str = "info"
    access_log: bool = True
    use_colors: bool | None = False


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Put the asgictl loggers, the root logger and the test loggers back as they were."""
    names = [None, "asgictl", ERROR_LOGGER, ACCESS_LOGGER, "asgictl_test.other"]
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.level, logger.propagate, logger.disabled))
    yield
    for logger, handlers, level, propagate, disabled in saved:
        for handler in logger.handlers[:]:
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate
        logger.disabled = disabled


def access_record(args: tuple = ACCESS_ARGS, msg: str = ACCESS_MSG) -> logging.LogRecord:
    return logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, msg, args, None)


def log_access(status: int = 200) -> None:
    args = (*ACCESS_ARGS[:4], status, ACCESS_ARGS[5])
    logging.getLogger(ACCESS_LOGGER).info(ACCESS_MSG, *args)


# -- default setup -----------------------------------------------------------------------------------


def test_trace_level_registered() -> None:
    assert TRACE_LEVEL == 5
    assert logging.getLevelName(5) == "TRACE"
    assert (logs.ERROR_LOGGER, logs.ACCESS_LOGGER) == ("asgictl.error", "asgictl.access")


def test_default_output(capsys: pytest.CaptureFixture[str]) -> None:
    root_collector = Collect()
    logging.getLogger().addHandler(root_collector)
    configure_logging(Opts())

    logging.getLogger(ERROR_LOGGER).info("Started server process [%d]", 123)
    logging.getLogger(ERROR_LOGGER).error("boom")
    log_access()

    out, err = capsys.readouterr()
    assert err == "INFO:     Started server process [123]\nERROR:    boom\n"
    assert out == 'INFO:     127.0.0.1:5000 - "GET /a?b=1 HTTP/1.1" 200 1.2ms\n'
    # Nothing reaches the root logger (the application's logging stays separate).
    assert root_collector.records == []
    assert isinstance(logging.getLogger("asgictl").handlers[0].formatter, DefaultFormatter)
    assert isinstance(logging.getLogger(ACCESS_LOGGER).handlers[0].formatter, AccessFormatter)


def test_other_asgictl_module_loggers_reach_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts())
    logging.getLogger("asgictl.worker.something").warning("careful")
    assert capsys.readouterr().err == "WARNING:  careful\n"


def test_configure_twice_does_not_duplicate(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts())
    configure_logging(Opts())
    logging.getLogger(ERROR_LOGGER).info("once")
    log_access()
    out, err = capsys.readouterr()
    assert err == "INFO:     once\n"
    assert out.count("\n") == 1


def test_default_output_with_colors(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(use_colors=True))
    logging.getLogger(ERROR_LOGGER).info("hello")
    log_access(404)
    out, err = capsys.readouterr()
    assert err == f"{GREEN}INFO{RESET}:     hello\n"
    assert out == (
        f'{GREEN}INFO{RESET}:     127.0.0.1:5000 - "{BOLD}GET /a?b=1 HTTP/1.1{RESET}" {RED}404{RESET} 1.2ms\n'
    )


def test_colors_auto_off_when_not_a_tty(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(use_colors=None))
    logging.getLogger(ERROR_LOGGER).info("hello")
    log_access()
    out, err = capsys.readouterr()
    assert ESC not in out and ESC not in err
    assert err == "INFO:     hello\n"


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colors_auto_follows_the_right_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", FakeTTY())
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    assert DefaultFormatter(use_colors=None).use_colors is True
    assert AccessFormatter(use_colors=None).use_colors is False
    monkeypatch.setattr(sys, "stdout", FakeTTY())
    assert AccessFormatter(use_colors=None).use_colors is True
    # Explicit values win over the terminal check.
    assert DefaultFormatter(use_colors=False).use_colors is False
    monkeypatch.setattr(sys, "stderr", None)  # e.g. pythonw
    assert DefaultFormatter(use_colors=None).use_colors is False


@pytest.mark.parametrize(
    ("level", "prefix"),
    [
        (TRACE_LEVEL, "TRACE:    "),
        (logging.DEBUG, "DEBUG:    "),
        (logging.INFO, "INFO:     "),
        (logging.WARNING, "WARNING:  "),
        (logging.ERROR, "ERROR:    "),
        (logging.CRITICAL, "CRITICAL: "),
    ],
)
def test_levelprefix_padding(level: int, prefix: str) -> None:
    record = logging.LogRecord(ERROR_LOGGER, level, __file__, 1, "msg", None, None)
    assert DefaultFormatter(use_colors=False).format(record) == f"{prefix}msg"
    colored = DefaultFormatter(use_colors=True).format(record)
    name = logging.getLevelName(level)
    assert colored.startswith(ESC) and f"{name}{RESET}:" in colored
    assert colored.endswith(prefix[len(name) :] + "msg")  # padding not widened by escape codes


def test_default_formatter_custom_format_and_exception() -> None:
    formatter = DefaultFormatter("%(name)s %(levelprefix)s%(message)s", use_colors=False)
    try:
        raise RuntimeError("bad")
    except RuntimeError:
        record = logging.LogRecord(ERROR_LOGGER, logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    text = formatter.format(record)
    assert text.startswith("asgictl.error ERROR:   failed\nTraceback")
    assert "RuntimeError: bad" in text
    assert not hasattr(record, "levelprefix")  # the caller's record is left alone


# -- levels ------------------------------------------------------------------------------------------


def test_trace_shown_at_trace_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(log_level="trace"))
    logging.getLogger(ERROR_LOGGER).log(TRACE_LEVEL, "low-level detail")
    assert capsys.readouterr().err == "TRACE:    low-level detail\n"


def test_trace_hidden_at_debug_level(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(log_level="debug"))
    logger = logging.getLogger(ERROR_LOGGER)
    logger.log(TRACE_LEVEL, "low-level detail")
    logger.debug("debug detail")
    assert capsys.readouterr().err == "DEBUG:    debug detail\n"


@pytest.mark.parametrize("level", ["critical", "error", "warning", "info", "debug", "trace", "WARNING"])
def test_log_level_sets_all_loggers(level: str) -> None:
    configure_logging(Opts(log_level=level))
    expected = logs.LOG_LEVELS[level.lower()]
    for name in ("asgictl", ERROR_LOGGER, ACCESS_LOGGER):
        assert logging.getLogger(name).level == expected


def test_warning_level_hides_info(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(log_level="warning"))
    logging.getLogger(ERROR_LOGGER).info("hidden")
    log_access()
    logging.getLogger(ERROR_LOGGER).warning("shown")
    out, err = capsys.readouterr()
    assert (out, err) == ("", "WARNING:  shown\n")


def test_unknown_log_level() -> None:
    with pytest.raises(ValueError, match=r"^--log-level: "):
        configure_logging(Opts(log_level="loud"))


def test_access_log_off(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(Opts(access_log=False))
    access = logging.getLogger(ACCESS_LOGGER)
    assert access.handlers == []
    assert access.propagate is False
    assert not access.isEnabledFor(logging.CRITICAL)
    log_access()
    # Would otherwise go to logging's "last resort" stderr handler.
    access.error("even errors")
    assert capsys.readouterr() == ("", "")
    logging.getLogger(ERROR_LOGGER).info("server still logs")
    assert capsys.readouterr().err == "INFO:     server still logs\n"


# -- --log-config ------------------------------------------------------------------------------------


def dict_config(log_file: Path) -> dict:
    return {
        "version": 1,
        "formatters": {
            "default": {
                "()": "asgictl.logs.DefaultFormatter",
                "fmt": "%(name)s %(levelprefix)s %(message)s",
                "use_colors": False,
            },
        },
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(log_file), "formatter": "default"},
        },
        "loggers": {
            "asgictl.error": {"handlers": ["file"], "level": "WARNING", "propagate": False},
        },
    }


def test_json_log_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "server.log"
    config_file = tmp_path / "logging.json"
    config_file.write_text(json.dumps(dict_config(log_file)))

    # log_level is applied after the file: "info" overrides the file's WARNING.
    configure_logging(Opts(log_config=str(config_file), log_level="info"))
    assert logging.getLogger(ERROR_LOGGER).level == logging.INFO
    logging.getLogger(ERROR_LOGGER).info("via json")
    logging.getLogger(ERROR_LOGGER).debug("too low")

    assert log_file.read_text() == "asgictl.error INFO:     via json\n"
    assert capsys.readouterr().err == ""


def test_yaml_log_config(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    log_file = tmp_path / "server.log"
    config_file = tmp_path / "logging.yaml"
    config_file.write_text(yaml.safe_dump(dict_config(log_file)))

    configure_logging(Opts(log_config=str(config_file), log_level="debug"))
    logging.getLogger(ERROR_LOGGER).debug("via yaml")

    assert log_file.read_text() == "asgictl.error DEBUG:    via yaml\n"


def test_yml_extension_and_cli_colors_reach_config_formatters(tmp_path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    log_file = tmp_path / "server.log"
    config_file = tmp_path / "logging.yml"
    config_file.write_text(yaml.safe_dump(dict_config(log_file)))

    configure_logging(Opts(log_config=str(config_file), use_colors=True))
    logging.getLogger(ERROR_LOGGER).info("colored")

    assert log_file.read_text() == f"asgictl.error {GREEN}INFO{RESET}:     colored\n"


def test_yaml_without_pyyaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file = tmp_path / "logging.yaml"
    config_file.write_text("version: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # makes "import yaml" raise ImportError
    with pytest.raises(ValueError, match=r"^--log-config: PyYAML is not installed"):
        configure_logging(Opts(log_config=str(config_file)))


def test_ini_log_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_file = tmp_path / "access.log"
    config_file = tmp_path / "logging.ini"
    config_file.write_text(
        "[loggers]\nkeys=root,access\n\n"
        "[handlers]\nkeys=file\n\n"
        "[formatters]\nkeys=access\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=\n\n"
        "[logger_access]\nlevel=INFO\nhandlers=file\npropagate=0\nqualname=asgictl.access\n\n"
        f"[handler_file]\nclass=FileHandler\nformatter=access\nargs=({str(log_file)!r},)\n\n"
        "[formatter_access]\nclass=asgictl.logs.AccessFormatter\n"
        "format=%(client_addr)s|%(request_line)s|%(status_code)s|%(duration_ms)s\n"
    )
    # An explicit --no-use-colors reaches formatters the INI file cannot pass use_colors to.
    configure_logging(Opts(log_config=str(config_file), use_colors=False))
    log_access(503)

    assert log_file.read_text() == "127.0.0.1:5000|GET /a?b=1 HTTP/1.1|503|1.2\n"
    assert capsys.readouterr() == ("", "")


def test_log_config_keeps_existing_loggers(tmp_path: Path) -> None:
    # Module-level loggers created before configuration must keep working.
    other = logging.getLogger("asgictl_test.other")
    collector = Collect()
    other.addHandler(collector)
    config_file = tmp_path / "logging.json"
    config_file.write_text(json.dumps(dict_config(tmp_path / "server.log")))
    configure_logging(Opts(log_config=str(config_file)))
    other.warning("still here")
    assert not other.disabled
    assert [r.getMessage() for r in collector.records] == ["still here"]


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("bad.json", "{not json"),
        ("bad.json", '{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}'),
        ("list.json", "[1, 2]"),
        ("bad.yaml", "version: 1\nhandlers: [\n  - unclosed: {\n"),
        ("empty.yaml", ""),
        ("bad.ini", "this is not\nan ini file\n"),
        ("partial.ini", "[loggers]\nkeys=root\n"),
    ],
)
def test_broken_log_config(tmp_path: Path, name: str, content: str) -> None:
    if name.endswith(".yaml"):
        pytest.importorskip("yaml")
    config_file = tmp_path / name
    config_file.write_text(content)
    with pytest.raises(ValueError, match=r"^--log-config: ") as info:
        configure_logging(Opts(log_config=str(config_file)))
    assert "\n" not in str(info.value)
    assert name in str(info.value)


@pytest.mark.parametrize("name", ["missing.json", "missing.yaml", "missing.ini", "missing.conf"])
def test_missing_log_config(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"^--log-config: .*No such file") as info:
        configure_logging(Opts(log_config=str(tmp_path / name)))
    assert "\n" not in str(info.value)


# -- AccessFormatter fields --------------------------------------------------------------------------

FIELDS_FMT = "%(client_addr)s|%(request_line)s|%(status_code)s|%(duration_ms)s"


def test_access_formatter_fields() -> None:
    formatter = AccessFormatter(FIELDS_FMT, use_colors=False)
    record = access_record()
    assert formatter.format(record) == "127.0.0.1:5000|GET /a?b=1 HTTP/1.1|200|1.2"
    assert not hasattr(record, "client_addr")  # the caller's record is left alone


def test_access_formatter_fields_with_levelprefix_and_message() -> None:
    formatter = AccessFormatter("%(levelprefix)s %(message)s [%(duration_ms).3f]", use_colors=False)
    assert formatter.format(access_record()) == (
        'INFO:     127.0.0.1:5000 - "GET /a?b=1 HTTP/1.1" 200 1.2ms [1.200]'
    )


@pytest.mark.parametrize(
    ("status", "color"), [(101, "\033[97m"), (204, GREEN), (302, YELLOW), (418, RED), (500, BRIGHT_RED)]
)
def test_access_formatter_status_colors(status: int, color: str) -> None:
    args = (*ACCESS_ARGS[:4], status, 12.345)
    record = access_record(args)
    assert AccessFormatter(use_colors=True).format(record) == (
        f'{GREEN}INFO{RESET}:     127.0.0.1:5000 - "{BOLD}GET /a?b=1 HTTP/1.1{RESET}" '
        f"{color}{status}{RESET} 12.3ms"
    )
    assert AccessFormatter(FIELDS_FMT, use_colors=True).format(record) == (
        f"127.0.0.1:5000|{BOLD}GET /a?b=1 HTTP/1.1{RESET}|{color}{status}{RESET}|12.3"
    )
    assert AccessFormatter(use_colors=False).format(record).endswith(f'HTTP/1.1" {status} 12.3ms')


def test_access_line_of_a_client_that_left_has_a_mark() -> None:
    record = access_record(msg=ACCESS_MESSAGE_DISCONNECTED)
    for colors in (False, True):
        line = AccessFormatter(use_colors=colors).format(record)
        assert line.endswith("1.2ms (client disconnected)"), line
    assert AccessFormatter("%(disconnected)s", use_colors=False).format(record) == "True"
    assert AccessFormatter("%(disconnected)s", use_colors=False).format(access_record()) == "False"
    assert not AccessFormatter(use_colors=False).format(access_record()).endswith(")")
    assert json.loads(JsonFormatter().format(record))["disconnected"] is True
    assert json.loads(JsonFormatter().format(access_record()))["disconnected"] is False


def test_access_formatter_falls_back_for_other_records() -> None:
    formatter = AccessFormatter(
        "%(levelprefix)s %(message)s %(client_addr)s %(status_code)s", use_colors=True
    )
    plain = access_record(args=("a", "b"), msg="%s and %s")
    assert formatter.format(plain) == f"{GREEN}INFO{RESET}:     a and b - -"
    # Six args that are not an access line (status not a number): message as-is, no crash.
    odd = access_record(args=("a", "b", "c", "d", "e", "f"), msg="%s %s %s %s %s %s")
    assert formatter.format(odd) == f"{GREEN}INFO{RESET}:     a b c d e f - -"
    # Six access-shaped args with another message: fields set, text not rewritten.
    other = access_record(msg="%s %s %s %s %s %s")
    assert AccessFormatter("%(message)s|%(status_code)s", use_colors=True).format(other) == (
        "127.0.0.1:5000 GET /a?b=1 1.1 200 1.234|\033[32m200\033[0m"
    )
    # Fields passed with extra= are kept.
    extra = access_record(args=(), msg="custom")
    extra.client_addr = "10.0.0.1"
    assert formatter.format(extra).endswith("custom 10.0.0.1 -")


# -- reopen_log_files --------------------------------------------------------------------------------


def test_reopen_log_files_after_rename(tmp_path: Path) -> None:
    error_path = tmp_path / "error.log"
    other_path = tmp_path / "other.log"
    error_logger = logging.getLogger(ERROR_LOGGER)
    other_logger = logging.getLogger("asgictl_test.other")
    error_logger.propagate = False
    other_logger.propagate = False
    error_logger.setLevel(logging.INFO)
    error_logger.addHandler(logging.FileHandler(error_path))
    other_logger.addHandler(logging.FileHandler(other_path))
    # Same handler on two loggers: reopened once, still works.
    shared_path = tmp_path / "shared.log"
    shared = logging.FileHandler(shared_path)
    error_logger.addHandler(shared)
    other_logger.addHandler(shared)
    # delay=True and never used: stays unopened.
    delayed = logging.FileHandler(tmp_path / "delayed.log", delay=True)
    logging.getLogger("asgictl").addHandler(delayed)

    error_logger.warning("before")
    other_logger.warning("before")
    for path in (error_path, other_path, shared_path):
        path.rename(path.with_suffix(".log.1"))

    reopen_log_files()
    error_logger.warning("after")
    other_logger.warning("after")

    assert error_path.read_text() == "after\n"
    assert (tmp_path / "error.log.1").read_text() == "before\n"
    assert other_path.read_text() == "after\n"
    assert (tmp_path / "other.log.1").read_text() == "before\n"
    assert shared_path.read_text() == "after\nafter\n"
    assert (tmp_path / "shared.log.1").read_text() == "before\nbefore\n"
    assert delayed.stream is None
    assert not (tmp_path / "delayed.log").exists()


def test_reopen_watched_file_handler(tmp_path: Path) -> None:
    path = tmp_path / "watched.log"
    logger = logging.getLogger("asgictl_test.other")
    logger.propagate = False
    handler = logging.handlers.WatchedFileHandler(path)
    logger.addHandler(handler)
    logger.warning("before")
    path.rename(tmp_path / "watched.log.1")
    reopen_log_files()
    stream_after_reopen = handler.stream
    logger.warning("after")
    assert path.read_text() == "after\n"
    # Its remembered inode was refreshed, so emit() did not reopen a second time.
    assert handler.stream is stream_after_reopen


def test_reopen_failure_is_reported_not_raised(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    path = log_dir / "server.log"
    logger = logging.getLogger("asgictl_test.other")
    logger.propagate = False
    handler = logging.FileHandler(path)
    logger.addHandler(handler)
    configure_logging(Opts())
    # The directory vanishes (the file cannot be recreated).
    path.unlink()
    log_dir.rmdir()

    reopen_log_files()

    assert handler.stream is None
    err = capsys.readouterr().err
    assert err.startswith("WARNING:  Could not reopen log files: ") and "server.log" in err


def test_plural() -> None:
    assert (logs.plural(1, "worker"), logs.plural(0, "worker"), logs.plural(2, "worker")) == (
        "1 worker",
        "0 workers",
        "2 workers",
    )
    assert logs.plural(3, "child", "children") == "3 children"

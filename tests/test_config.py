"""The option table: precedence (command line > environment > file > default), aliases,
configuration files, env files and error messages, through ``resolve`` and ``Config``."""

from __future__ import annotations

import textwrap
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from asgictl.config import (
    BY_NAME,
    OPTIONS,
    SERVE,
    START,
    Config,
    ConfigError,
    read_config_file,
    read_env_file,
    resolve,
)


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def serve(
    cli: dict[str, Any] | None = None, env: dict[str, str] | None = None, cwd: Path | None = None
) -> Config:
    return resolve(
        SERVE, {"app": "main:app", **(cli or {})}, dict(env or {}), str(cwd) if cwd else "/nonexistent"
    )


# -------------------------------------------------------------------------- precedence

#: option, command-line value, environment value, file value (TOML), and what each gives.
LAYERS = [
    ("port", "1001", "1002", "1003", (1001, 1002, 1003, 8000)),
    ("timeout_keep_alive", "0.5", "2.5", "7.25", (0.5, 2.5, 7.25, 5.0)),
    ("access_log", False, "true", "false", (False, True, False, True)),
    ("server_header", True, "0", "true", (True, False, True, True)),
    ("http", "h11", "HTTPTOOLS", '"auto"', ("h11", "httptools", "auto", "auto")),
    ("lifespan", "off", "on", '"auto"', ("off", "on", "auto", "auto")),
    (
        "headers",
        ["X-A:1", "X-B: 2"],
        "X-C:3,X-D:4",
        '["X-E:5"]',
        ([("X-A", "1"), ("X-B", "2")], [("X-C", "3"), ("X-D", "4")], [("X-E", "5")], []),
    ),
    ("root_path", "/cli", "/env", '"/file"', ("/cli", "/env", "/file", "")),
    ("http2", False, "true", "false", (False, True, False, True)),
    ("h2c_upgrade", True, "false", "true", (True, False, True, False)),
    ("http2_engine", "zttp", "h2", '"auto"', ("zttp", "h2", "auto", "auto")),
    ("http2_max_concurrent_streams", "10", "20", "30", (10, 20, 30, 100)),
]


@pytest.mark.parametrize(("name", "cli", "env", "file", "expected"), LAYERS, ids=[row[0] for row in LAYERS])
def test_precedence(name: str, cli: Any, env: str, file: str, expected: tuple, tmp_path: Path) -> None:
    opt = BY_NAME[name]
    env_name = opt.env_names[0]
    assert env_name == "ASGICTL_" + name.upper()
    key = name.replace("_", "-")
    write(tmp_path / "pyproject.toml", f"[tool.asgictl]\n{key} = {file}\n")
    everything = {name: cli}, {env_name: env}
    assert getattr(serve(*everything, cwd=tmp_path), name) == expected[0]
    assert getattr(serve({}, {env_name: env}, cwd=tmp_path), name) == expected[1]
    assert getattr(serve({}, {}, cwd=tmp_path), name) == expected[2]
    assert getattr(serve({}, {}), name) == expected[3]
    assert getattr(serve({name: None}, {}), name) == expected[3]  # typer's "not given"


def test_empty_repeatable_option_on_the_command_line_is_not_given() -> None:
    assert serve({"headers": []}, {"ASGICTL_HEADERS": "X-A:1"}).headers == [("X-A", "1")]


def test_uvicorn_environment_aliases() -> None:
    assert serve({}, {"FORWARDED_ALLOW_IPS": "10.0.0.1"}).forwarded_allow_ips == "10.0.0.1"
    both = {"FORWARDED_ALLOW_IPS": "10.0.0.1", "ASGICTL_FORWARDED_ALLOW_IPS": "10.0.0.2"}
    assert serve({}, both).forwarded_allow_ips == "10.0.0.2"
    assert serve({"forwarded_allow_ips": "*"}, both).forwarded_allow_ips == "*"
    assert serve().forwarded_allow_ips == "127.0.0.1,::1"
    start = {"app": "main:app"}
    assert resolve(START, start, {"WEB_CONCURRENCY": "3"}, "/nonexistent").workers == 3
    assert (
        resolve(START, start, {"WEB_CONCURRENCY": "3", "ASGICTL_WORKERS": "5"}, "/nonexistent").workers == 5
    )
    assert resolve(START, {**start, "workers": "2"}, {"WEB_CONCURRENCY": "3"}, "/nonexistent").workers == 2
    assert resolve(START, start, {}, "/nonexistent").workers == 1


def test_every_option_has_one_env_variable_and_cli_name() -> None:
    names = [opt.name for opt in OPTIONS]
    assert len(names) == len(set(names))
    for opt in OPTIONS:
        assert opt.env_names[0] == "ASGICTL_" + opt.name.upper()
        assert opt.cli_name == "--" + opt.name.replace("_", "-")
        assert opt.help
    for name in (
        "host",
        "port",
        "uds",
        "fd",
        "interface",
        "lifespan",
        "http",
        "loop",
        "env_file",
        "log_config",
    ):
        assert SERVE in BY_NAME[name].commands


# ------------------------------------------------------------------------------- files


def test_config_file_top_level_keys(tmp_path: Path) -> None:
    path = write(
        tmp_path / "asgictl.toml",
        """\
        app = "fromfile:app"
        port = 9001
        proxy-headers = false
        header = ["X-From:file"]
        limit_concurrency = 7
        workers = 4  # a key of another command is fine in a shared file
        """,
    )
    config = resolve(SERVE, {"config": str(path)}, {}, "/nonexistent")
    assert config.app == "fromfile:app"
    assert (config.port, config.proxy_headers, config.limit_concurrency) == (9001, False, 7)
    assert config.headers == [("X-From", "file")]
    assert config.workers == 1  # read, checked, and left to `start`


def test_config_file_tool_table_and_env_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conf.toml",
        """\
        port = 1  # ignored: [tool.asgictl] wins when present
        [tool.asgictl]
        port = 9002
        """,
    )
    assert resolve(SERVE, {"app": "m:a", "config": str(path)}, {}, "/nonexistent").port == 9002
    assert resolve(SERVE, {"app": "m:a"}, {"ASGICTL_CONFIG": str(path)}, "/nonexistent").port == 9002


def test_config_file_replaces_pyproject(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\nport = 9003\nroot-path = '/py'\n")
    other = write(tmp_path / "other.toml", "port = 9004\n")
    config = resolve(SERVE, {"app": "m:a", "config": str(other)}, {}, str(tmp_path))
    assert (config.port, config.root_path) == (9004, "")


def test_pyproject_in_cwd(tmp_path: Path) -> None:
    write(
        tmp_path / "pyproject.toml",
        """\
        [project]
        name = "demo"

        [tool.asgictl]
        app = "demo.main:app"
        http = "h11"
        """,
    )
    config = resolve(SERVE, {}, {}, str(tmp_path))
    assert (config.app, config.http) == ("demo.main:app", "h11")
    # The app, too, follows command line > environment > file.
    assert resolve(SERVE, {}, {"ASGICTL_APP": "env:app"}, str(tmp_path)).app == "env:app"
    assert resolve(SERVE, {"app": "cli:app"}, {"ASGICTL_APP": "env:app"}, str(tmp_path)).app == "cli:app"


def test_pyproject_without_tool_table_is_ignored(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", '[project]\nname = "x"\nport = 1\n')
    assert serve({}, {}, cwd=tmp_path).port == 8000


def test_missing_app() -> None:
    with pytest.raises(ConfigError, match=r"^APP: missing"):
        resolve(SERVE, {}, {}, "/nonexistent")


def test_unknown_key_in_a_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", "port = 1\nbogus-option = 2\n")
    with pytest.raises(ConfigError, match=r"unknown option 'bogus-option'") as info:
        resolve(SERVE, {"app": "m:a", "config": str(path)}, {}, "/nonexistent")
    assert str(path) in str(info.value)
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\nprot = 8080\n")
    with pytest.raises(ConfigError, match=r"unknown option 'prot'"):
        serve({}, {}, cwd=tmp_path)
    # --config itself cannot be set from a file.
    path = write(tmp_path / "d.toml", "config = 'other.toml'\n")
    with pytest.raises(ConfigError, match=r"unknown option 'config'"):
        read_config_file(str(path))


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "port = = 1\n")
    with pytest.raises(ConfigError) as info:
        resolve(SERVE, {"app": "m:a", "config": str(path)}, {}, "/nonexistent")
    message = str(info.value)
    assert message.startswith(f"--config: {path} is not valid TOML") and "\n" not in message


def test_config_file_that_does_not_exist() -> None:
    with pytest.raises(ConfigError, match=r"^--config: '/no/such.toml' is not a readable file$"):
        serve({"config": "/no/such.toml"})


# ---------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("port", "eighty", "'eighty' is not an integer"),
        ("port", "70000", "70000 is not a port number (0-65535)"),
        ("backlog", "0", "0 must be greater than zero"),
        ("timeout_keep_alive", "-1", "-1.0 must not be negative"),
        ("http", "spdy", "'spdy' is not one of auto, h1c, httptools, h11"),
        ("access_log", "maybe", "'maybe' is not a boolean (use true or false)"),
        ("headers", "NoColon", "'NoColon' is not of the form Name:Value"),
        ("uds_mode", "999", "'999' is not an octal file mode such as 660"),
        ("ssl_cert_reqs", "3", "'3' is not one of 0, 1, 2"),
    ],
)
def test_bad_value_names_option_and_source(name: str, value: str, reason: str, tmp_path: Path) -> None:
    opt = BY_NAME[name]
    flag = opt.cli_name
    cli_value: Any = [value] if opt.multiple else value
    with pytest.raises(ConfigError) as info:
        serve({name: cli_value})
    assert str(info.value) == f"{flag}: {reason}"

    env_name = opt.env_names[0]
    with pytest.raises(ConfigError) as info:
        serve({}, {env_name: value})
    assert str(info.value) == f"{flag} (from {env_name}): {reason}"

    pyproject = write(tmp_path / "pyproject.toml", f"[tool.asgictl]\n{name} = {value!r}\n")
    with pytest.raises(ConfigError) as info:
        serve({}, {}, cwd=tmp_path)
    assert str(info.value) == f"{flag} (from {pyproject}): {reason}"


def test_typed_toml_values_are_checked(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\nport = true\n")
    with pytest.raises(ConfigError, match=r"^--port \(from .*pyproject.toml\): True is not an integer$"):
        serve({}, {}, cwd=tmp_path)
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\naccess-log = 1\n")
    with pytest.raises(ConfigError, match=r"^--access-log \(from .*\): 1 is not a boolean"):
        serve({}, {}, cwd=tmp_path)
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\nheaders = 'X-A:1,X-B:2'\naccess-log = 'no'\n")
    config = serve({}, {}, cwd=tmp_path)
    assert config.headers == [("X-A", "1"), ("X-B", "2")] and config.access_log is False


def test_a_bad_value_in_a_lower_layer_is_still_reported(tmp_path: Path) -> None:
    # A typo in the file is reported even when the command line overrides the option:
    # the file is read (and checked) as a whole.
    write(tmp_path / "pyproject.toml", "[tool.asgictl]\nport = 'x'\n")
    with pytest.raises(ConfigError, match=r"--port \(from .*\)"):
        serve({"port": "1"}, {}, cwd=tmp_path)


# ------------------------------------------------------------------------------ env file


def test_read_env_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / ".env",
        """\
        # a comment

        PLAIN=value
        SPACED = spaced value   # trailing comment
        export EXPORTED=yes
        DOUBLE="a \\"quoted\\" value\\twith escapes # not a comment"
        SINGLE='literal \\n $HOME'
        EMPTY=
        WITH_EQUALS=a=b=c
        """,
    )
    assert read_env_file(str(path)) == {
        "PLAIN": "value",
        "SPACED": "spaced value",
        "EXPORTED": "yes",
        "DOUBLE": 'a "quoted" value\twith escapes # not a comment',
        "SINGLE": "literal \\n $HOME",
        "EMPTY": "",
        "WITH_EQUALS": "a=b=c",
    }


def test_bad_env_file_line_is_skipped_as_dotenv_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / ".env", "GOOD=1\nthis is not an assignment\nAFTER=2\n")
    assert read_env_file(str(path)) == {"GOOD": "1", "AFTER": "2"}
    assert "could not parse statement starting at line 2" in caplog.text


def test_env_file_expansion_and_precedence(tmp_path: Path) -> None:
    path = write(
        tmp_path / ".env",
        """\
        BASE=/srv
        DATA=${BASE}/data
        HOME_BIN=${HOME}/bin
        HOME=/from/file
        MISSING=${NOT_SET:-dflt}${ALSO_NOT}
        GREETING="héllo wörld"
        """,
    )
    values = read_env_file(str(path), {"HOME": "/home/me"})
    assert values["DATA"] == "/srv/data"
    assert values["HOME_BIN"] == "/home/me/bin"  # the environment wins, as load_dotenv()
    assert values["MISSING"] == "dflt" and values["GREETING"] == "héllo wörld"
    environ = {"HOME": "/home/me"}
    resolve(SERVE, {"app": "m:a", "env_file": str(path)}, environ, "/nonexistent")
    assert environ["HOME"] == "/home/me" and environ["DATA"] == "/srv/data"


def test_env_file_feeds_environment_and_options(tmp_path: Path) -> None:
    path = write(tmp_path / ".env", "ASGICTL_PORT=9005\nASGICTL_HTTP=h11\nAPP_SETTING=on\n")
    environ = {"ASGICTL_HTTP": "httptools"}
    config = resolve(SERVE, {"app": "m:a", "env_file": str(path)}, environ, "/nonexistent")
    assert config.port == 9005  # from the env file
    assert config.http == "httptools"  # the real environment wins over the env file
    assert environ["APP_SETTING"] == "on"  # the app will see it
    # The env file is found through the environment, too.
    environ = {"ASGICTL_ENV_FILE": str(path)}
    assert resolve(SERVE, {"app": "m:a"}, environ, "/nonexistent").port == 9005
    # The command line still beats a value from the env file.
    assert resolve(SERVE, {"app": "m:a", "env_file": str(path), "port": "1"}, {}, "/nonexistent").port == 1


# ------------------------------------------------------------------------------ Config


def test_config_python_api() -> None:
    config = Config("main:app", port="8080", http="h11", headers=["X-A:1", ("X-B", "2")], access_log="false")
    assert (config.app, config.port, config.http, config.access_log) == ("main:app", 8080, "h11", False)
    assert config.headers == [("X-A", "1"), ("X-B", "2")]
    defaults = Config("main:app")
    for opt in OPTIONS:
        assert getattr(defaults, opt.name) == opt.default
    assert defaults.headers == [] and defaults.headers is not BY_NAME["headers"].default
    assert config.replace(port=1).port == 1 and config.replace(port=1).http == "h11"


def test_config_rejects_bad_and_unknown_values() -> None:
    with pytest.raises(ConfigError, match=r"^--port: -1 is not a port number"):
        Config("m:a", port=-1)
    with pytest.raises(TypeError, match=r"unknown option: prot$"):
        Config("m:a", prot=1)
    with pytest.raises(ConfigError, match=r"^--ssl-keyfile: needs --ssl-certfile"):
        Config("m:a", ssl_keyfile=__file__)
    with pytest.raises(ConfigError, match=r"^--uds-mode: only applies with --uds"):
        Config("m:a", uds_mode="600")
    with pytest.raises(ConfigError, match=r"^--uds and --fd"):
        Config("m:a", uds="/tmp/x.sock", fd=3)


@pytest.mark.parametrize("value", ["a\x01b", "a\x1fb", "a\x7fb", "a\rb", "a\nb", "a\x00b"], ids=repr)
def test_default_header_values_hold_no_control_bytes(value: str) -> None:
    # The server writes --header fields as they are, unchecked per response: a control
    # byte (RFC 9110 5.5) is refused at startup, with one line.
    with pytest.raises(ConfigError, match=r"^--headers: .* is not a valid header$"):
        Config("m:a", headers=[("x-a", value)])
    assert Config("m:a", headers=[("x-a", "a\tb c")]).headers == [("x-a", "a\tb c")]


def test_replace_changes_app_and_options() -> None:
    from asgictl.config import Config

    base = Config("a:b", port=1, http="h11")
    copy = base.replace(app="x:y", port=2)
    assert (copy.app, copy.port, copy.http) == ("x:y", 2, "h11")
    assert (base.app, base.port) == ("a:b", 1)


def test_config_annotations_match_the_option_table() -> None:
    """Every option of the table is a typed attribute of Config, and nothing else is:
    a new option cannot be forgotten in the class a type checker and a reader see, and
    every default has the annotated type."""
    hints = typing.get_type_hints(Config)
    hints.pop("app")
    assert set(hints) == {opt.name for opt in OPTIONS}
    for opt in OPTIONS:
        hint = hints[opt.name]
        allowed = typing.get_args(hint) if typing.get_origin(hint) is types.UnionType else (hint,)
        runtime = tuple(typing.get_origin(t) or t for t in allowed)
        default = opt.default
        if opt.multiple:
            assert runtime == (list,), opt.name
            default = list(default)
        assert isinstance(default, tuple(type(None) if t is None else t for t in runtime)), (opt.name, hint)

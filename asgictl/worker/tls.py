"""The TLS context built from the ``--ssl-*`` options."""

from __future__ import annotations

import ssl

from asgictl.config import Config, ConfigError


def create_ssl_context(config: Config) -> ssl.SSLContext | None:
    if not config.ssl_certfile:
        return None
    try:
        ctx = ssl.SSLContext(config.ssl_version)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--ssl-version: {config.ssl_version} is not usable: {exc}") from None
    password = config.ssl_keyfile_password
    try:
        ctx.load_cert_chain(config.ssl_certfile, config.ssl_keyfile, password=password)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"--ssl-certfile/--ssl-keyfile: cannot load: {exc}") from None
    ctx.verify_mode = ssl.VerifyMode(int(config.ssl_cert_reqs))
    if config.ssl_ca_certs:
        try:
            ctx.load_verify_locations(config.ssl_ca_certs)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"--ssl-ca-certs: cannot load: {exc}") from None
    if config.ssl_ciphers:
        try:
            ctx.set_ciphers(config.ssl_ciphers)
        except ssl.SSLError:
            raise ConfigError(f"--ssl-ciphers: no cipher matches {config.ssl_ciphers!r}") from None
    # ALPN (RFC 7301): a client that offers h2 gets HTTP/2 (RFC 9113 3.2).
    ctx.set_alpn_protocols(["h2", "http/1.1"] if config.http2 else ["http/1.1"])
    return ctx

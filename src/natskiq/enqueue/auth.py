"""Stage 1, connecting: the credentials and TLS a client presents to NATS.

Receives what the user supplies to authenticate (user/password, a token,
an NKey seed file, a creds file, TLS files) as arguments of
:func:`auth_options` or as the ``NATSKIQ_*`` environment variables standing
in for them (:data:`AUTH_ENV`), and hands on the matching nats-py
connection options (``user``, ``password``, ``token``, ``nkeys_seed``,
``user_credentials``, ``tls``, ``tls_hostname``). :func:`env_auth` is what
:class:`~natskiq.enqueue.client.Client` calls when it opens: the environment's
credentials (or TLS) for whichever its own options leave unset.

It guarantees that a bad setting fails before any connection is tried,
with a :class:`~natskiq.errors.ConfigError` naming the setting (or the
variable) and never its secret value, and that secrets never reach a log
line or an error message: :func:`redact_url` shows URLs with their
``user:password@`` part replaced by ``***@``.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from natskiq.errors import ConfigError

# What a URL may hold after its last '@': a host name or IPv4 address, or an
# IPv6 address in brackets, then an optional port. Anything else could be
# part of a secret that was cut short (a '/', '?' or '#' in a password).
_HOST = re.compile(r"(?:[A-Za-z0-9._~%-]*|\[[0-9A-Fa-f:.]+(?:%[^\]]*)?\])(?::[0-9]{1,5})?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
REDACTED = "***"


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list) with any ``user:password@`` part replaced by ``***@``.

    Each URL is parsed (the user information ends at the *last* ``@`` of
    its network location, so a password may hold ``@``); one that does not
    parse as a host and port after that is shown as ``***`` past its scheme.
    Never raises.
    """
    try:
        parts = [part.strip() for part in url.split(",")]
        shown = [_redact_one(part) for part in parts]
        for index in range(1, len(parts)):
            # A ',' inside a password splits one URL in two ('nats://u:pa' and
            # 'ss@h'): what comes before a scheme-less 'x@' may be a secret.
            if "@" in parts[index] and not _SCHEME.match(parts[index]) and _cut_short(parts[index - 1]):
                shown[index - 1] = _scheme(parts[index - 1]) + REDACTED
        return ",".join(shown)
    except Exception:  # whatever the input, never fail (or leak) while reporting it
        return REDACTED


def _scheme(url: str) -> str:
    """The ``scheme://`` a URL starts with, or ''."""
    found = _SCHEME.match(url)
    return found.group() if found else ""


def _netloc(url: str) -> str:
    """The ``user:password@host:port`` part of a URL (scheme or not); ValueError if it does not parse."""
    parts = urlsplit("//" + url[len(_scheme(url)) :])
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number up to 65535
    return parts.netloc


def _redact_one(url: str) -> str:
    """One URL with its user information, if any, replaced by ``***``."""
    prefix = _scheme(url)
    try:
        parts = urlsplit("//" + url[len(prefix) :])
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number up to 65535
    except ValueError:
        _, at, host = url.rpartition("@")
        return prefix + (f"{REDACTED}@{host}" if at and _HOST.fullmatch(host) else REDACTED)
    _, at, host = parts.netloc.rpartition("@")
    if not _HOST.fullmatch(host):
        return prefix + REDACTED
    rest = (
        parts.path
        + (f"?{parts.query}" if parts.query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
    return prefix + (f"{REDACTED}@" if at else "") + host + rest


def _cut_short(url: str) -> bool:
    """Whether a URL may be the first half of one whose password held a ','."""
    try:
        netloc = _netloc(url)
    except ValueError:
        return True
    return "@" not in netloc or not re.search(r":[0-9]+$", netloc)


def _has_userinfo(url: str) -> bool:
    """Whether a URL carries credentials (``user:password@`` or ``token@``)."""
    try:
        return "@" in _netloc(url)
    except ValueError:
        return "@" in url  # cannot tell: assume the URL carries its own credentials


AUTH_ENV = {
    "user": "NATSKIQ_USER",
    "password": "NATSKIQ_PASSWORD",
    "token": "NATSKIQ_TOKEN",
    "nkey_seed": "NATSKIQ_NKEY_SEED",
    "creds": "NATSKIQ_CREDS",
    "tls_ca": "NATSKIQ_TLS_CA",
    "tls_cert": "NATSKIQ_TLS_CERT",
    "tls_key": "NATSKIQ_TLS_KEY",
    "tls_hostname": "NATSKIQ_TLS_HOSTNAME",
}
"""The environment variable standing in for each :func:`auth_options` argument."""

CREDENTIAL_KEYS = ("user", "password", "token", "nkey_seed", "creds")
TLS_KEYS = ("tls_ca", "tls_cert", "tls_key", "tls_hostname")
# nats-py options that carry credentials or TLS: when any is passed to
# connect(), the environment's stand-ins for that group are not consulted.
NATS_CREDENTIAL_OPTIONS = (
    "user",
    "password",
    "token",
    "nkeys_seed",
    "nkeys_seed_str",
    "user_credentials",
    "signature_cb",
    "user_jwt_cb",
)
NATS_TLS_OPTIONS = ("tls", "tls_hostname")


def auth_options(
    *,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    nkey_seed: str | Path | None = None,
    creds: str | Path | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    tls_hostname: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """nats-py connection options for these credentials and TLS files.

    Every argument left ``None`` is taken from its environment variable when
    that is set: ``NATSKIQ_USER``, ``NATSKIQ_PASSWORD``, ``NATSKIQ_TOKEN``,
    ``NATSKIQ_NKEY_SEED``, ``NATSKIQ_CREDS``, ``NATSKIQ_TLS_CA``,
    ``NATSKIQ_TLS_CERT``, ``NATSKIQ_TLS_KEY``, ``NATSKIQ_TLS_HOSTNAME``;
    but credentials given replace the environment's (with ``token`` given,
    ``$NATSKIQ_USER`` is ignored), which then only complete a user/password
    pair (``user="app"`` with ``$NATSKIQ_PASSWORD``). Pass the result to
    :func:`connect`::

        natskiq.connect(url, **auth_options(user="app", password=secret))

    Args:
        user: user name; needs ``password``.
        password: the user's password.
        token: an authorization token.
        nkey_seed: path of a file holding a user NKey seed (``SU...``).
        creds: path of a ``.creds`` file (a user JWT and its NKey seed).
        tls_ca: path of the CA certificate(s) (PEM) that signed the server's
            certificate; without it the system's CAs are trusted.
        tls_cert: path of this client's certificate (PEM), for servers that
            verify clients; needs ``tls_key``.
        tls_key: path of this client's private key (PEM, unencrypted).
        tls_hostname: the name to verify the server's certificate against,
            when it differs from the URL's host.
        env: where to look up the stand-ins (default ``os.environ``; ``{}``
            to use the arguments alone).

    Returns:
        Keyword arguments for :func:`nats.connect` (``user``, ``password``,
        ``token``, ``nkeys_seed``, ``user_credentials``, ``tls``,
        ``tls_hostname``): only those that are set.

    Raises:
        ConfigError: a file is missing or unreadable, a password comes
            without a user (or the reverse), a certificate without its key
            (or the reverse), or more than one way to authenticate is set.
            The message names the setting, never its secret value.
    """
    given = {"user": user, "password": password, "token": token, "nkey_seed": nkey_seed, "creds": creds}
    given |= {"tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key, "tls_hostname": tls_hostname}
    source = os.environ if env is None else env
    values = {key: str(value) for key, value in given.items() if value is not None}
    names = {key: key for key in values}
    fill = [key for key in given if key not in values and source.get(AUTH_ENV[key])]
    if any(key in values for key in CREDENTIAL_KEYS):
        # Credentials given replace the environment's, which may only complete a user/password pair.
        pair = ("user", "password") if "user" in values or "password" in values else ()
        fill = [key for key in fill if key in TLS_KEYS or key in pair]
    for key in fill:
        values[key], names[key] = source[AUTH_ENV[key]], f"${AUTH_ENV[key]}"
    return {**_credential_options(values, names), **_tls_options(values, names)}


def _credential_options(values: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    """The nats-py credential options, checking that exactly one way is set."""
    if "password" in values and "user" not in values:
        raise ConfigError(f"{names['password']} is set without a user: add --user or $NATSKIQ_USER")
    if "user" in values and "password" not in values:
        raise ConfigError(f"{names['user']} is set without a password: add $NATSKIQ_PASSWORD or --password")
    ways = [key for key in ("user", "token", "nkey_seed", "creds") if key in values]
    if len(ways) > 1:
        raise ConfigError(
            "more than one way to authenticate is set ("
            + ", ".join(names[key] for key in ways)
            + "): use one of user/password, token, NKey seed or creds"
        )
    if "user" in values:
        return {"user": values["user"], "password": values["password"]}
    if "token" in values:
        return {"token": values["token"]}
    if "nkey_seed" in values:
        path, name = values["nkey_seed"], names["nkey_seed"]
        _check_seed(_read_file("NKey seed", path, name), f"NKey seed file {path} ({name})")
        return {"nkeys_seed": values["nkey_seed"]}
    if "creds" in values:
        _check_creds(values["creds"], names["creds"])
        return {"user_credentials": values["creds"]}
    return {}


def _read_file(what: str, path: str, name: str) -> bytes:
    """A file's bytes, or a ConfigError naming the setting and path."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{what} file {path} ({name}) does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path} ({name}): {exc.strerror}") from None


def _check_seed(text: bytes, where: str) -> None:
    """Refuse what is not an NKey seed (without ever showing its contents)."""
    try:
        import nkeys  # nats-py needs it for NKeys and creds; a dependency of natskiq
    except ImportError:  # pragma: no cover - installed with natskiq
        raise ConfigError("NKey seeds and creds files need the nkeys package: pip install nkeys") from None
    try:
        nkeys.from_seed(bytearray(text.strip())).wipe()
    except Exception:
        # Any failure of the decoder means "not a seed"; its message could quote the text.
        raise ConfigError(f"{where} does not hold a valid NKey seed") from None


def _check_creds(path: str, name: str) -> None:
    """A creds file must hold a user JWT and a seed (nats-py reads past EOF looking for the JWT)."""
    text = _read_file("creds", path, name)
    if b"BEGIN NATS USER JWT" not in text or b"BEGIN USER NKEY SEED" not in text:
        raise ConfigError(f"creds file {path} ({name}) lacks a user JWT or NKey seed section")
    seed = text.split(b"BEGIN USER NKEY SEED", 1)[1].split(b"\n", 1)[-1].split(b"\n", 1)[0]
    _check_seed(seed, f"creds file {path} ({name})")


def _tls_options(values: dict[str, str], names: dict[str, str]) -> dict[str, Any]:
    """An ``ssl.SSLContext`` trusting ``tls_ca`` and presenting ``tls_cert``, when either is set."""
    options: dict[str, Any] = {}
    if "tls_hostname" in values:
        options["tls_hostname"] = values["tls_hostname"]
    if ("tls_cert" in values) != ("tls_key" in values):
        have, lack = ("tls_cert", "tls_key") if "tls_cert" in values else ("tls_key", "tls_cert")
        raise ConfigError(
            f"{names[have]} is set without {lack}: a client certificate needs its key and the reverse"
        )
    if "tls_ca" not in values and "tls_cert" not in values:
        return options
    ca = values.get("tls_ca")
    if ca is not None:
        _read_file("TLS CA", ca, names["tls_ca"])
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"cannot load TLS CA {ca} ({names['tls_ca']}): {exc}") from None
    if "tls_cert" in values:
        cert, key = values["tls_cert"], values["tls_key"]
        _read_file("TLS certificate", cert, names["tls_cert"])
        _read_file("TLS key", key, names["tls_key"])
        try:
            context.load_cert_chain(cert, key, password=_no_key_password)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load TLS certificate {cert} with key {key}: {exc}") from None
    options["tls"] = context
    return options


def _no_key_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key.
    raise ConfigError("encrypted TLS keys are not supported: give an unencrypted key file")


def env_auth(nats_options: Mapping[str, Any], urls: Sequence[str]) -> dict[str, Any]:
    """Credentials and TLS from the environment, for whichever the options (and URLs) leave unset."""
    has_credentials = any(nats_options.get(key) is not None for key in NATS_CREDENTIAL_OPTIONS)
    has_credentials = has_credentials or any(_has_userinfo(url) for url in urls)
    has_tls = any(nats_options.get(key) is not None for key in NATS_TLS_OPTIONS)
    if has_credentials and has_tls:
        return {}
    wanted = (() if has_credentials else CREDENTIAL_KEYS) + (() if has_tls else TLS_KEYS)
    env = {AUTH_ENV[key]: os.environ[AUTH_ENV[key]] for key in wanted if os.environ.get(AUTH_ENV[key])}
    return auth_options(env=env)

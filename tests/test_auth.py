"""Authentication and TLS: every way a nats-server can demand credentials, end to end.

Each case boots a nats-server from a config file written here that requires
one of user/password, a token, an NKey, a creds file (operator/JWT mode) or
a TLS client certificate signed by a CA made here, then checks that
``natskiq.connect()`` enqueues, that a ``natskiq worker`` given the
credentials by flags or by ``NATSKIQ_*`` variables runs the job, that
``natskiq stats --json`` works, that a wrong or missing credential fails at
once with a clear message, and that no secret reaches a log or ``--json``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import ipaddress
import json
import os
import random
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import natskiq
from natskiq import cli
from natskiq.enqueue.auth import AUTH_ENV, auth_options, redact_url
from natskiq.ops.launcher import Settings
from natskiq.ops.server import Server

from .conftest import ROOT, Workers, wait_for_ledger
from .sample_workers import Record

# A refused first connect must end the process long before this (a backstop, not a measurement).
EXIT_WITHIN = 60.0


# -- keys, certificates, JWTs ----------------------------------------------


def _keypair(prefix: int) -> tuple[Any, str]:
    """A fresh NKey pair of a role (operator, account, user) and its seed."""
    seed = nkeys.encode_seed(os.urandom(32), prefix)
    return nkeys.from_seed(bytearray(seed)), seed.decode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(claims: dict[str, Any], signer: Any) -> str:
    """A NATS JWT: base64url JSON header and claims, signed with the issuer's ed25519 NKey."""
    body = {"iat": int(time.time()), **claims, "jti": ""}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    payload = _b64(json.dumps(body).encode())
    signature = _b64(signer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


def _public(kp: Any) -> str:
    return str(kp.public_key.decode())


UNLIMITED = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": True}
UNLIMITED |= {"conn": -1, "leaf": -1}
JETSTREAM = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}


def _account_jwt(operator: Any, account: Any, name: str, *, jetstream: bool) -> str:
    limits = UNLIMITED | (JETSTREAM if jetstream else {})
    nats = {"type": "account", "version": 2, "limits": limits}
    return _jwt({"iss": _public(operator), "sub": _public(account), "name": name, "nats": nats}, operator)


def _creds(account: Any, path: Path) -> str:
    """Write a creds file for a new user of ``account``; returns the user's seed."""
    user, seed = _keypair(nkeys.PREFIX_BYTE_USER)
    nats = {"type": "user", "version": 2, "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    token = _jwt({"iss": _public(account), "sub": _public(user), "name": "app", "nats": nats}, account)
    path.write_text(
        f"-----BEGIN NATS USER JWT-----\n{token}\n------END NATS USER JWT------\n\n"
        f"-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    )
    path.chmod(0o600)
    return seed


def _operator_config(tmp: Path) -> tuple[str, Any]:
    """Operator/JWT mode with a MEMORY resolver: config text and the app account's key."""
    operator, _ = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    system, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    account, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    op_nats = {"type": "operator", "version": 2, "system_account": _public(system)}
    op_jwt = _jwt(
        {"iss": _public(operator), "sub": _public(operator), "name": "op", "nats": op_nats}, operator
    )
    config = f"""
operator: {op_jwt}
system_account: {_public(system)}
resolver: MEMORY
resolver_preload: {{
  {_public(system)}: {_account_jwt(operator, system, "SYS", jetstream=False)}
  {_public(account)}: {_account_jwt(operator, account, "app", jetstream=True)}
}}
"""
    return config, account


def _pem(path: Path, obj: Any) -> Path:
    if isinstance(obj, x509.Certificate):
        path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return path


def _certificate(
    cn: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any, usage: str
) -> x509.Certificate:
    """A certificate for ``key``: a self-signed CA (usage "ca"), or a server or client leaf."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_public = (issuer_key if issuer is not None else key).public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public), critical=False)
    )
    ca = usage == "ca"
    builder = builder.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=ca,
            crl_sign=ca,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    if usage == "server":
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    elif usage == "client":
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return builder.sign(issuer_key if issuer is not None else key, hashes.SHA256())


def make_tls(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("natskiq test CA", ca_key, None, None, "ca")
    files = {"ca": _pem(directory / "ca.pem", ca)}
    for usage in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"natskiq test {usage}", key, ca, ca_key, usage)
        files[f"{usage}_cert"] = _pem(directory / f"{usage}.pem", cert)
        files[f"{usage}_key"] = _pem(directory / f"{usage}-key.pem", key)
    return files


# -- servers that demand credentials ----------------------------------------


@dataclasses.dataclass(kw_only=True)
class Secured:
    """A server config that demands one kind of credential, and how to give it."""

    mode: str
    config: str  # the server config's authorization or tls block
    options: dict[str, Any]  # for natskiq.connect()
    flags: list[str]  # for natskiq worker / stats
    env: dict[str, str]  # NATSKIQ_* variables standing in for the flags
    wrong: list[str]  # flags the server must refuse
    secrets: list[str]  # strings that must never be printed or logged
    refusal: str = "Authorization Violation"  # what the error says when refused
    url: str = ""  # set once the server runs


def _userpass(tmp: Path) -> Secured:
    password, wrong = f"pw-{secrets.token_hex(8)}", f"wrong-{secrets.token_hex(8)}"
    return Secured(
        mode="userpass",
        config=f'authorization {{ users = [ {{ user: "alice", password: "{password}" }} ] }}',
        options=auth_options(user="alice", password=password, env={}),
        flags=["--user", "alice", "--password", password],
        env={"NATSKIQ_USER": "alice", "NATSKIQ_PASSWORD": password},
        wrong=["--user", "alice", "--password", wrong],
        secrets=[password, wrong],
    )


def _token(tmp: Path) -> Secured:
    token, wrong = f"tok-{secrets.token_hex(12)}", f"wrong-{secrets.token_hex(8)}"
    return Secured(
        mode="token",
        config=f'authorization {{ token: "{token}" }}',
        options=auth_options(token=token, env={}),
        flags=["--token", token],
        env={"NATSKIQ_TOKEN": token},
        wrong=["--token", wrong],
        secrets=[token, wrong],
    )


def _nkey(tmp: Path) -> Secured:
    user, seed = _keypair(nkeys.PREFIX_BYTE_USER)
    _, other = _keypair(nkeys.PREFIX_BYTE_USER)  # a key the server does not know
    path, wrong = tmp / "user.nk", tmp / "other.nk"
    path.write_text(seed + "\n")
    wrong.write_text(other + "\n")
    return Secured(
        mode="nkey",
        config=f'authorization {{ users = [ {{ nkey: "{_public(user)}" }} ] }}',
        options=auth_options(nkey_seed=path, env={}),
        flags=["--nkey-seed", str(path)],
        env={"NATSKIQ_NKEY_SEED": str(path)},
        wrong=["--nkey-seed", str(wrong)],
        secrets=[seed, other],
    )


def _creds_mode(tmp: Path) -> Secured:
    config, account = _operator_config(tmp)
    path, wrong = tmp / "app.creds", tmp / "stranger.creds"
    seed = _creds(account, path)
    stranger, _ = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # an account the server never heard of
    other = _creds(stranger, wrong)
    return Secured(
        mode="creds",
        config=config,
        options=auth_options(creds=path, env={}),
        flags=["--creds", str(path)],
        env={"NATSKIQ_CREDS": str(path)},
        wrong=["--creds", str(wrong)],
        secrets=[seed, other],
    )


def _tls(tmp: Path) -> Secured:
    files = make_tls(tmp / "pki")
    ca, cert, key = str(files["ca"]), str(files["client_cert"]), str(files["client_key"])
    return Secured(
        mode="tls",
        config=(
            f'tls {{ cert_file: "{files["server_cert"]}", key_file: "{files["server_key"]}", '
            f'ca_file: "{ca}", verify: true }}'
        ),
        options=auth_options(tls_ca=ca, tls_cert=cert, tls_key=key, env={}),
        flags=["--tls-ca", ca, "--tls-cert", cert, "--tls-key", key],
        env={"NATSKIQ_TLS_CA": ca, "NATSKIQ_TLS_CERT": cert, "NATSKIQ_TLS_KEY": key},
        wrong=["--tls-ca", ca],  # trusts the server but shows no client certificate
        secrets=[],
        refusal="certificate",
    )


MODES = {"userpass": _userpass, "token": _token, "nkey": _nkey, "creds": _creds_mode, "tls": _tls}


@pytest.fixture(params=list(MODES))
def secured(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Secured]:
    """A JetStream server from a config file that demands the parameter's kind of credential."""
    case = MODES[request.param](tmp_path)
    config = tmp_path / "server.conf"
    store = tmp_path / "js"
    config.write_text(f'listen: "127.0.0.1:-1"\njetstream {{ store_dir: "{store}" }}\n{case.config}\n')
    server = Server(config=config)
    case.url = server.start()
    try:
        yield case
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def no_auth_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests here start without NATSKIQ_* credentials and set the ones they use."""
    for name in AUTH_ENV.values():
        monkeypatch.delenv(name, raising=False)


def _natskiq(*argv: str) -> list[str]:
    return [sys.executable, "-m", "natskiq", *argv]


async def _run(cmd: list[str]) -> tuple[int, str, str]:
    """Run a command to its end; the test fails (rather than hangs) if it does not exit in time."""
    with anyio.fail_after(EXIT_WITHIN):
        result = await anyio.run_process(cmd, cwd=ROOT, env=os.environ.copy(), check=False)
    return result.returncode, result.stdout.decode(), result.stderr.decode()


def _assert_hidden(case: Secured, *texts: str) -> None:
    for text in texts:
        for secret in case.secrets:
            assert secret not in text, f"a {case.mode} secret was printed or logged"


# -- end to end ------------------------------------------------------------


@pytest.mark.parametrize("via", ["flags", "env"])
async def test_worker_runs_jobs_with_credentials(
    secured: Secured, via: str, namespace: str, tmp_path: Path, ledger: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() enqueues and a worker given the credentials (flags or NATSKIQ_* variables) runs the job."""
    async with natskiq.connect(secured.url, namespace=namespace, **secured.options) as client:
        jid = await client.enqueue(Record, 0, "secured")
    if via == "env":
        for name, value in secured.env.items():
            monkeypatch.setenv(name, value)
    flags = secured.flags if via == "flags" else []
    workers = Workers(secured.url, namespace, tmp_path)
    try:
        workers.start(*flags, "--log-level", "debug")
        rows = await wait_for_ledger(ledger, 1)
        assert [row.jid for row in rows] == [jid]
        code, out, err = await _run(
            _natskiq("stats", "--json", "--url", secured.url, "-n", namespace, *flags)
        )
    finally:
        workers.stop_all()
    assert code == 0, err
    doc = json.loads(out)
    assert "default" in [queue["name"] for queue in doc["queues"]]
    logs = workers.logs()
    assert "node w0 started" in logs
    _assert_hidden(secured, logs, out, err)


async def test_wrong_or_missing_credentials_fail_fast(secured: Secured, namespace: str) -> None:
    """A refused connection is a clear ConfigError in Python and exit code 2 from the CLI."""
    worker = ["worker", "--app", "tests.sample_workers", "--url", secured.url, "-n", namespace]
    stats = ["stats", "--json", "--url", secured.url, "-n", namespace, *secured.wrong]
    commands = [_natskiq(*worker, *secured.wrong), _natskiq(*worker), _natskiq(*stats)]
    results: list[tuple[int, str, str]] = [(0, "", "")] * len(commands)

    async def run(index: int) -> None:
        results[index] = await _run(commands[index])

    async with anyio.create_task_group() as tg:  # the three commands at once: each waits on refusals
        for index in range(len(commands)):
            tg.start_soon(run, index)
        with pytest.raises(natskiq.ConfigError, match=secured.refusal):
            async with natskiq.connect(secured.url, namespace=namespace):
                pass
    for code, out, err in results[:2]:
        assert code == 2, err
        assert "natskiq: error: cannot connect to NATS at" in err
        assert secured.refusal in err
        _assert_hidden(secured, out, err)
    code, out, err = results[2]
    assert (code, out) == (2, "")
    assert secured.refusal in err
    _assert_hidden(secured, err)


async def test_connect_takes_credentials_from_the_environment(
    secured: Secured, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no auth options, connect() uses the NATSKIQ_* variables."""
    for name, value in secured.env.items():
        monkeypatch.setenv(name, value)
    async with natskiq.connect(secured.url, namespace=namespace) as client:
        await client.enqueue(Record, 0, "from env")
        assert (await natskiq.api.queue_info(client, "default")).ready == 1


@pytest.mark.parametrize("secured", ["userpass"], indirect=True)
async def test_url_credentials_work_and_are_never_shown(
    secured: Secured, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``nats://user:password@host`` connects; errors, reprs and the CLI show it as ``***@``."""
    password, wrong = secured.secrets
    host = secured.url.removeprefix("nats://")
    # Credentials in the URL count as given: the environment's token is not sent instead.
    monkeypatch.setenv("NATSKIQ_TOKEN", "not-this-one")
    client = natskiq.connect(f"nats://alice:{password}@{host}", namespace=namespace)
    assert password not in repr(client)
    async with client:
        await client.enqueue(Record, 0, "url")
    with pytest.raises(natskiq.ConfigError, match="Authorization Violation") as refused:
        async with natskiq.connect(f"nats://alice:{wrong}@{host}", namespace=namespace):
            pass
    assert f"nats://***@{host}" in str(refused.value)
    _assert_hidden(secured, str(refused.value), repr(refused.value))
    monkeypatch.delenv("NATSKIQ_TOKEN")
    code, out, err = await _run(_natskiq("stats", "--json", "--url", f"nats://alice:{wrong}@{host}"))
    assert code == 2
    assert f"nats://***@{host}" in err
    _assert_hidden(secured, out, err)


@pytest.mark.parametrize("secured", ["tls"], indirect=True)
async def test_tls_hostname_is_what_the_certificate_is_checked_against(
    secured: Secured, namespace: str
) -> None:
    """tls_hostname replaces the URL's host in the check: a name the certificate lacks is refused."""
    files = {key: secured.env[f"NATSKIQ_TLS_{key.upper()}"] for key in ("ca", "cert", "key")}
    paths = {"tls_ca": files["ca"], "tls_cert": files["cert"], "tls_key": files["key"]}
    async with natskiq.connect(
        secured.url, namespace=namespace, **auth_options(**paths, tls_hostname="localhost")
    ):
        pass
    with pytest.raises(natskiq.ConfigError, match="certificate verify failed"):
        async with natskiq.connect(secured.url, **auth_options(**paths, tls_hostname="elsewhere.example")):
            pass


# -- auth_options ----------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    return make_tls(tmp_path / "pki")


@pytest.fixture
def seed_file(tmp_path: Path) -> Path:
    _, seed = _keypair(nkeys.PREFIX_BYTE_USER)
    path = tmp_path / "user.nk"
    path.write_text(seed + "\n")
    return path


def test_auth_options_build_nats_py_arguments(pki: dict[str, Path], seed_file: Path, tmp_path: Path) -> None:
    """Each way to authenticate becomes the nats-py keyword arguments for it, and only those."""
    _, account = _operator_config(tmp_path)
    _creds(account, tmp_path / "app.creds")
    assert auth_options(env={}) == {}
    assert auth_options(user="alice", password="pw", env={}) == {"user": "alice", "password": "pw"}
    assert auth_options(token="tok", env={}) == {"token": "tok"}
    assert auth_options(nkey_seed=seed_file, env={}) == {"nkeys_seed": str(seed_file)}
    assert auth_options(creds=tmp_path / "app.creds", env={}) == {
        "user_credentials": str(tmp_path / "app.creds")
    }
    options = auth_options(
        tls_ca=pki["ca"],
        tls_cert=pki["client_cert"],
        tls_key=pki["client_key"],
        tls_hostname="nats.example",
        env={},
    )
    assert set(options) == {"tls", "tls_hostname"}
    assert options["tls_hostname"] == "nats.example"
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "natskiq test CA"),),)]


def _bad_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"password": "hunter2-secret"}, "password is set without a user"),
        ({"user": "alice"}, "user is set without a password"),
        (
            {"user": "alice", "password": "hunter2-secret", "token": "t0k-secret"},
            r"more than one way .*\(user, token\)",
        ),
        ({"token": "t0k-secret", "nkey_seed": "SEED"}, r"more than one way .*\(token, nkey_seed\)"),
        ({"nkey_seed": "MISSING"}, r"NKey seed file .*missing.nk \(nkey_seed\) does not exist"),
        ({"nkey_seed": "BAD:SUXSECRETNOTASEED"}, r"bad.txt \(nkey_seed\) does not hold a valid NKey seed"),
        ({"creds": "MISSING"}, "creds file .* does not exist"),
        ({"creds": "BAD:just a line"}, "lacks a user JWT or NKey seed section"),
        ({"tls_ca": "MISSING"}, r"TLS CA file .* \(tls_ca\) does not exist"),
        ({"tls_ca": "BAD:not a certificate"}, r"cannot load TLS CA .*bad.txt"),
        ({"tls_cert": "CERT"}, "tls_cert is set without tls_key"),
        ({"tls_key": "KEY"}, "tls_key is set without tls_cert"),
        ({"tls_cert": "MISSING", "tls_key": "KEY"}, "TLS certificate file .* does not exist"),
    ],
)
def test_auth_options_refuse_what_cannot_work(
    kwargs: dict[str, str], message: str, pki: dict[str, Path], tmp_path: Path
) -> None:
    """Missing or malformed files and inconsistent combinations are ConfigErrors that show no secret."""
    files = {
        "SEED": str(tmp_path / "seed.nk"),
        "CERT": str(pki["client_cert"]),
        "KEY": str(pki["client_key"]),
    }
    _, seed = _keypair(nkeys.PREFIX_BYTE_USER)
    (tmp_path / "seed.nk").write_text(seed)
    resolved = {}
    for key, value in kwargs.items():
        if value == "MISSING":
            value = str(tmp_path / "missing.nk")
        elif value.startswith("BAD:"):
            value = str(_bad_file(tmp_path, value[4:]))
        resolved[key] = files.get(value, value)
    with pytest.raises(natskiq.ConfigError, match=message) as refused:
        auth_options(**resolved, env={})
    for secret in ("hunter2-secret", "t0k-secret", "SUXSECRETNOTASEED", seed):
        assert secret not in str(refused.value)


def test_encrypted_client_key_is_refused(pki: dict[str, Path], tmp_path: Path) -> None:
    """A passphrase-protected key is a ConfigError, never a prompt on the terminal."""
    key = serialization.load_pem_private_key(pki["client_key"].read_bytes(), password=None)
    encrypted = tmp_path / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    with pytest.raises(natskiq.ConfigError, match="encrypted TLS keys are not supported"):
        auth_options(tls_cert=pki["client_cert"], tls_key=encrypted, env={})


def test_environment_fills_what_is_not_given(pki: dict[str, Path]) -> None:
    """NATSKIQ_* variables stand in for missing arguments; given credentials replace the environment's."""
    env = {"NATSKIQ_USER": "alice", "NATSKIQ_PASSWORD": "pw"}
    assert auth_options(env=env) == {"user": "alice", "password": "pw"}
    assert auth_options(user="bob", env=env) == {"user": "bob", "password": "pw"}
    assert auth_options(token="tok", env=env) == {"token": "tok"}
    with pytest.raises(natskiq.ConfigError, match=r"\(\$NATSKIQ_USER, \$NATSKIQ_TOKEN\)"):
        auth_options(env={**env, "NATSKIQ_TOKEN": "tok"})
    with pytest.raises(natskiq.ConfigError, match=r"\$NATSKIQ_PASSWORD is set without a user"):
        auth_options(env={"NATSKIQ_PASSWORD": "pw"})
    tls_env = {"NATSKIQ_TLS_CERT": str(pki["client_cert"]), "NATSKIQ_TLS_KEY": str(pki["client_key"])}
    options = auth_options(tls_ca=pki["ca"], token="tok", env={**env, **tls_env})
    assert options["token"] == "tok"
    assert isinstance(options["tls"], ssl.SSLContext)
    with pytest.raises(natskiq.ConfigError, match=r"\$NATSKIQ_TLS_CERT is set without tls_key"):
        auth_options(env={"NATSKIQ_TLS_CERT": str(pki["client_cert"])})


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://alice:s3cret@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("tls://t0ken@nats.example:4222", "tls://***@nats.example:4222"),
        ("alice:s3cret@h1:4222, nats://bob:pw@h2:4222,h3", "***@h1:4222,nats://***@h2:4222,h3"),
        ("nats://h/p@th", "nats://h/p@th"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """The user:password@ (or token@) part of each URL is replaced by ***@."""
    assert redact_url(url) == shown


# -- the command line ------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["worker"], ["stats"], ["queues"], ["retry", "list"], ["scheduled", "list"], ["failed", "list"]],
)
def test_every_command_takes_the_auth_flags(command: list[str], pki: dict[str, Path]) -> None:
    """Every command that talks to NATS accepts the authentication and TLS flags."""
    flags = ["--user", "alice", "--password", "pw", "--tls-ca", str(pki["ca"]), "--tls-hostname", "n.example"]
    args = cli._parser().parse_args([*command, *flags])
    options = cli.connection_auth(args)
    assert (options["user"], options["password"], options["tls_hostname"]) == ("alice", "pw", "n.example")
    for flag in ("--token", "--nkey-seed", "--creds", "--tls-cert", "--tls-key"):
        cli._parser().parse_args([*command, flag, "x"])


def test_worker_settings_take_auth_from_flags_environment_and_file(
    pki: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flags win, then NATSKIQ_* variables, then the config file; the password stays out of repr."""
    monkeypatch.chdir(tmp_path)
    config = f'app = "tests.sample_workers"\nuser = "fromfile"\ntls_ca = "{pki["ca"]}"\n'
    (tmp_path / "natskiq.toml").write_text(config + 'tls-hostname = "n.example"\n')
    monkeypatch.setenv("NATSKIQ_PASSWORD", "pw-from-env")
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert isinstance(settings, Settings)
    options = settings.nats_options
    assert (options["user"], options["password"], options["tls_hostname"]) == (
        "fromfile",
        "pw-from-env",
        "n.example",
    )
    assert isinstance(options["tls"], ssl.SSLContext)
    assert "pw-from-env" not in repr(settings)
    monkeypatch.setenv("NATSKIQ_USER", "fromenv")
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert settings.nats_options["user"] == "fromenv"
    settings, _ = cli.worker_settings(cli._parser().parse_args(["worker", "--user", "fromflag"]))
    assert settings.nats_options["user"] == "fromflag"


@pytest.mark.parametrize("key", ["password", "token"])
def test_config_file_must_not_hold_secrets(key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A password or token in natskiq.toml is refused, pointing at the environment variable."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "natskiq.toml").write_text(f'app = "x"\n{key} = "s3cret"\n')
    with pytest.raises(
        natskiq.ConfigError, match=rf"must not hold secrets \({key}\).*NATSKIQ_{key.upper()}"
    ) as e:
        cli.worker_settings(cli._parser().parse_args(["worker"]))
    assert "s3cret" not in str(e.value)


# -- redacting URLs (issue 16) ----------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:p@ss@127.0.0.1:4222", "nats://***@127.0.0.1:4222"),
        ("nats://user:P@ssW0rd-Q7Xb3@127.0.0.1:45677", "nats://***@127.0.0.1:45677"),
        ("nats://a@b@c@h", "nats://***@h"),
        ("nats://u:p@[::1]:4222", "nats://***@[::1]:4222"),
        ("tls://t0ken@[fe80::1%25eth0]:4222", "tls://***@[fe80::1%25eth0]:4222"),
        ("nats://[::1]:4222", "nats://[::1]:4222"),
        ("u:p@ss@h1:4222", "***@h1:4222"),
        ("t@ken@h1", "***@h1"),
        ("h1:4222", "h1:4222"),
        ("nats://a:1@h1:4222,nats://b:2@h2:4222", "nats://***@h1:4222,nats://***@h2:4222"),
        ("nats://u:pa,ss@h", "nats://***,***@h"),
        ("nats://u:12,34@h", "nats://***,***@h"),
        ("nats://u:p/ss@h", "nats://***@h"),
        ("nats://u:p?ss@h", "nats://***@h"),
        ("nats://u:p#ss@h", "nats://***@h"),
        ("nats://u:p@[::1", "nats://***"),
        ("nats://u:p@h:port", "nats://***"),
        ("nats://u:p@h x", "nats://***"),
        ("", ""),
        ("nats://", "nats://"),
    ],
)
def test_redact_url_parses_each_url(url: str, shown: str) -> None:
    """The user information ends at the last '@'; what cannot be told from a host is hidden too."""
    assert redact_url(url) == shown


@pytest.mark.parametrize("separator", list("@:/?#[]%, \t\n;=&+"))
def test_redact_url_never_shows_a_password_whatever_it_holds(separator: str) -> None:
    """A password holding any URL separator shows no part of itself, in a list or alone."""
    secret = f"S3cr{separator}et9"
    for url in (
        f"nats://alice:{secret}@127.0.0.1:4222",
        f"alice:{secret}@127.0.0.1:4222",
        f"nats://h0:4222,nats://alice:{secret}@[::1]:4222",
        f"nats://alice:{secret}@h1:4222, nats://bob:{secret}@h2:4222",
    ):
        shown = redact_url(url)
        assert "S3cr" not in shown and "et9" not in shown, (url, shown)


def test_redact_url_never_raises() -> None:
    """Garbage (control characters, brackets, lone separators, huge input) comes back redacted, not raised."""
    rng = random.Random(16)
    alphabet = "ab1:@/?#[]%,. \t\n\x00\udcff"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(40)))
        assert isinstance(redact_url(text), str)
    assert redact_url("nats://u:" + "p" * 100_000 + "@h") == "nats://***@h"
    assert redact_url(None) == "***"  # type: ignore[arg-type]


def test_cli_error_hides_a_password_holding_at() -> None:
    """``natskiq stats`` on a closed port shows its URL as ``nats://***@host:port``: none of the password."""
    with socket.socket() as sock:  # a port nothing listens on (once closed)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"nats://user:p@ss@127.0.0.1:{port}"
    result = subprocess.run(
        _natskiq("stats", "--url", url), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"nats://***@127.0.0.1:{port}" in output
    assert "p@ss" not in output and "ss@" not in output

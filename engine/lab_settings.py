"""The operator's settings of a lab server: what a browser user may reach, read from a TOML file no browser writes.

Responsible for: finding and reading the settings file ($RLAIF_LAB_SETTINGS, else `lab_settings.toml` in the
repository root; none at all is valid and means the defaults below), checking its keys, and the network rule
(`network_problem`: a lab that listens beyond loopback without login must be an explicit operator choice).

Not responsible for: applying the settings to a run config (engine.policy) or anything Streamlit does. The CLI
never reads this file: whoever runs `python -m engine` already has the server's files and credentials.

The file (every key optional; see docs/security.md):

    allow_unauthenticated_network = false   # the explicit opt-out of the loopback rule (trusted networks only)

    [paths]                                 # folders a browser user may name; relative: from this file's folder
    data = ["../shared/data", "."]
    models = ["~/.cache/rlaif-lab", "runs"]
    outputs = ["runs"]

    [[judges.openai]]                       # one OpenAI-compatible endpoint a browser user may use
    base_url = "http://127.0.0.1:8000/v1"
    api_key_env = "OPENAI_API_KEY"          # the one variable whose value may be sent to that endpoint
    models = ["*"]                          # model ids; "*" = any

    [[judges.bedrock]]                      # one Bedrock region (and endpoint) a browser user may use
    region = "us-east-1"
    endpoint_url = ""                       # "": AWS's own endpoint of the region
    models = ["anthropic.claude-3-haiku-20240307-v1:0"]

    [auth]                                  # serving a team: an authenticating proxy in front (docs/security.md)
    mode = "proxy"                          # "none" (default: no login) or "proxy"
    admins = ["lead@example.org"]           # users who may cancel / delete / resume any run
    user_header = "X-Lab-User"              # the header in which the proxy names the logged-in user
    secret_header = "X-Lab-Proxy-Secret"    # the header carrying the shared secret; its value comes from
                                            # $RLAIF_LAB_PROXY_SECRET or lab_proxy_secret in .streamlit/secrets.toml

No `[[judges.*]]` entry (the default) means no LLM judge from the browser at all.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

SETTINGS_ENV_VAR = "RLAIF_LAB_SETTINGS"
NETWORK_OPT_OUT_ENV_VAR = "RLAIF_LAB_ALLOW_UNAUTHENTICATED_NETWORK"
PROXY_SECRET_ENV_VAR = "RLAIF_LAB_PROXY_SECRET"  # the proxy's shared secret (or lab_proxy_secret in secrets.toml)
AUTH_MODES = ("none", "proxy")
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SETTINGS_PATH = REPO_ROOT / "lab_settings.toml"
MAX_SETTINGS_BYTES = 1_000_000

_TOP_KEYS = {"allow_unauthenticated_network", "paths", "judges", "auth"}
_AUTH_KEYS = {"mode", "admins", "user_header", "secret_header"}
_PATH_KEYS = {"data", "models", "outputs"}
_OPENAI_KEYS = {"base_url", "api_key_env", "models"}
_BEDROCK_KEYS = {"region", "endpoint_url", "models"}


class SettingsError(ValueError):
    """The operator's settings file is malformed (the lab refuses to serve rather than guess)."""


@dataclass(frozen=True)
class OpenAIEndpoint:
    """An OpenAI-compatible endpoint the browser may use, the one key variable sent to it, and its model ids."""

    base_url: str  # normalised (see normalise_url)
    api_key_env: str = "OPENAI_API_KEY"  # the judge's own default, so an options block without it matches too
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class BedrockEndpoint:
    """A Bedrock region (and endpoint; "" = AWS's own) the browser may use, and its model ids."""

    region: str
    endpoint_url: str = ""  # normalised; "" = no endpoint_url in the judge's options
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class AuthSettings:
    """The login mode: "none" (a single user on loopback) or "proxy" (an authenticating reverse proxy names the
    user in `user_header`, trusted only with the shared secret in `secret_header`); `admins` act on any run."""

    mode: str = "none"
    admins: tuple[str, ...] = ()
    user_header: str = "X-Lab-User"
    secret_header: str = "X-Lab-Proxy-Secret"

    @property
    def login(self) -> bool:
        return self.mode != "none"


@dataclass(frozen=True)
class LabSettings:
    """What the operator allows a browser user; `source` names the file (or "defaults") for error messages."""

    source: str = "defaults"
    allow_unauthenticated_network: bool = False
    data_roots: tuple[Path, ...] = ()
    model_roots: tuple[Path, ...] = ()
    output_roots: tuple[Path, ...] = ()
    openai: tuple[OpenAIEndpoint, ...] = ()
    bedrock: tuple[BedrockEndpoint, ...] = ()
    auth: AuthSettings = AuthSettings()
    fingerprint: str = field(default="", compare=False)  # changes when the file changes (cache keys)


def settings_path() -> Path:
    """The settings file's path: $RLAIF_LAB_SETTINGS, else lab_settings.toml in the repository root."""
    env = os.environ.get(SETTINGS_ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_SETTINGS_PATH


def default_roots() -> tuple[tuple[Path, ...], tuple[Path, ...], tuple[Path, ...]]:
    """(data, models, outputs) of a lab without a settings file, each resolved.

    outputs: ./runs from the server's working directory (where the default output_dir "runs" writes);
    data: the shared data folder beside the checkout and the repository itself;
    models: the asset cache ($RLAIF_LAB_CACHE or ~/.cache/rlaif-lab, where the built-in models live) and the
    outputs (a reward model trained by a run is a model the next run may use).
    """
    from engine.assets import cache_root

    outputs = (_real(Path("runs")),)
    data = (_real(REPO_ROOT.parent / "shared" / "data"), _real(REPO_ROOT))
    models = (_real(cache_root()), *outputs)
    return data, models, outputs


def _real(path: Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def normalise_url(url: str) -> str:
    """A URL compared by scheme, host, port and path: lower-case scheme and host, default port made explicit,
    no trailing slash. ValueError when it is not an http(s) URL or carries credentials."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:8000/v1")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not contain credentials (user:password@)")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"


def _strings(value: object, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{where} must be a list of strings")
    return tuple(value)


def _unknown(table: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(allowed))}")


def parse_settings(data: dict, base: Path, source: str = "defaults", fingerprint: str = "") -> LabSettings:
    """LabSettings from the parsed TOML `data`; relative folders are taken from `base`. SettingsError when wrong."""
    _unknown(data, _TOP_KEYS, "settings")
    allow = data.get("allow_unauthenticated_network", False)
    if not isinstance(allow, bool):
        raise SettingsError("allow_unauthenticated_network must be true or false")
    data_roots, model_roots, output_roots = default_roots()
    paths = data.get("paths", {})
    if not isinstance(paths, dict):
        raise SettingsError("[paths] must be a table")
    _unknown(paths, _PATH_KEYS, "[paths]")

    def roots(key: str, default: tuple[Path, ...]) -> tuple[Path, ...]:
        if key not in paths:
            return default
        return tuple(_real(p if p.is_absolute() else base / p)
                     for p in (Path(os.path.expanduser(s)) for s in _strings(paths[key], f"paths.{key}")))

    judges = data.get("judges", {})
    if not isinstance(judges, dict):
        raise SettingsError("[judges] must be a table")
    _unknown(judges, {"openai", "bedrock"}, "[judges]")
    openai, bedrock = [], []
    for i, entry in enumerate(judges.get("openai", [])):
        where = f"judges.openai[{i}]"
        if not isinstance(entry, dict) or "base_url" not in entry:
            raise SettingsError(f"{where} must be a table with base_url")
        _unknown(entry, _OPENAI_KEYS, where)
        try:
            url = normalise_url(str(entry["base_url"]))
        except ValueError as exc:
            raise SettingsError(f"{where}.base_url {exc}") from None
        openai.append(OpenAIEndpoint(url, str(entry.get("api_key_env", "OPENAI_API_KEY")),
                                     _strings(entry.get("models", []), f"{where}.models")))
    for i, entry in enumerate(judges.get("bedrock", [])):
        where = f"judges.bedrock[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("region"), str) or not entry["region"]:
            raise SettingsError(f"{where} must be a table with a region")
        _unknown(entry, _BEDROCK_KEYS, where)
        endpoint = str(entry.get("endpoint_url") or "")
        try:
            endpoint = normalise_url(endpoint) if endpoint else ""
        except ValueError as exc:
            raise SettingsError(f"{where}.endpoint_url {exc}") from None
        bedrock.append(BedrockEndpoint(entry["region"], endpoint,
                                       _strings(entry.get("models", []), f"{where}.models")))
    return LabSettings(source=source, allow_unauthenticated_network=allow, auth=_auth(data.get("auth", {})),
                       data_roots=roots("data", data_roots), model_roots=roots("models", model_roots),
                       output_roots=roots("outputs", output_roots), openai=tuple(openai), bedrock=tuple(bedrock),
                       fingerprint=fingerprint)


def _auth(table: object) -> AuthSettings:
    if not isinstance(table, dict):
        raise SettingsError("[auth] must be a table")
    _unknown(table, _AUTH_KEYS, "[auth]")
    mode = table.get("mode", "none")
    if mode not in AUTH_MODES:
        raise SettingsError(f"auth.mode must be one of {', '.join(AUTH_MODES)}, got {str(mode)[:80]!r}")
    headers = {}
    for key in ("user_header", "secret_header"):
        value = table.get(key, getattr(AuthSettings, key))
        if not isinstance(value, str) or not value or not all(c.isalnum() or c == "-" for c in value):
            raise SettingsError(f"auth.{key} must be an HTTP header name (letters, digits, '-')")
        headers[key] = value
    if headers["user_header"].lower() == headers["secret_header"].lower():
        raise SettingsError("auth.user_header and auth.secret_header must differ")
    return AuthSettings(mode=mode, admins=_strings(table.get("admins", []), "auth.admins"), **headers)


_CACHE: dict[tuple[str, int, int, str], LabSettings] = {}


def load_settings(path: str | os.PathLike | None = None) -> LabSettings:
    """The operator's settings from `path` (None: settings_path()); the defaults when the file does not exist.

    Re-read when the file changes (its mtime and size key a small cache). SettingsError for a malformed file.
    """
    p = Path(path).expanduser() if path is not None else settings_path()
    cwd = os.getcwd()  # the default outputs folder is relative to the working directory
    try:
        st = p.stat()
    except FileNotFoundError:
        if path is not None or os.environ.get(SETTINGS_ENV_VAR, "").strip():
            # an operator who names a file means it: a typo must not silently fall back to the defaults
            raise SettingsError(f"the lab settings file {p} does not exist") from None
        key = ("", 0, 0, cwd)
        if key not in _CACHE:
            _CACHE[key] = parse_settings({}, REPO_ROOT, fingerprint=f"defaults:{cwd}")
        return _CACHE[key]
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size, cwd)
    if key not in _CACHE:
        if st.st_size > MAX_SETTINGS_BYTES:
            raise SettingsError(f"the lab settings file {p} is larger than {MAX_SETTINGS_BYTES} bytes")
        try:
            import tomllib  # Python >= 3.11
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SettingsError(f"the lab settings file {p} is not valid TOML: {exc}") from None
        _CACHE[key] = parse_settings(data, p.resolve().parent, source=p.name,
                                     fingerprint=f"{key[0]}:{key[1]}:{key[2]}:{cwd}")
    return _CACHE[key]


# ---- network -----------------------------------------------------------------------------------------------


def is_loopback(address: str | None) -> bool:
    """Whether a server address listens on loopback only ("" / None / 0.0.0.0 / :: listen everywhere)."""
    address = (address or "").strip().strip("[]")
    if not address:
        return False
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False  # a host name other than localhost, or a unix socket: not provably loopback


def network_opt_out(settings: LabSettings | None = None) -> bool:
    """Whether the operator explicitly allows serving beyond loopback without login (env var or settings)."""
    env = os.environ.get(NETWORK_OPT_OUT_ENV_VAR, "").strip().lower()
    return env in ("1", "true", "yes") or bool(settings and settings.allow_unauthenticated_network)


def proxy_secret(secrets: dict | None = None) -> str:
    """The proxy's shared secret: $RLAIF_LAB_PROXY_SECRET, else `lab_proxy_secret` in `secrets` (the app passes
    .streamlit/secrets.toml); "" when neither is set. Never stored in the settings file (which may be in a repo)."""
    value = os.environ.get(PROXY_SECRET_ENV_VAR, "") or str((secrets or {}).get("lab_proxy_secret", "") or "")
    return value.strip()


def auth_problem(settings: LabSettings | None, secret: str) -> str | None:
    """Why the configured login cannot work, or None: proxy mode without a shared secret (fail closed)."""
    if settings is not None and settings.auth.mode == "proxy" and len(secret) < 16:
        return (f"[auth] mode = \"proxy\" needs a shared secret of at least 16 characters in "
                f"{PROXY_SECRET_ENV_VAR} or lab_proxy_secret in .streamlit/secrets.toml (the proxy sends it in "
                f"{settings.auth.secret_header}). See docs/security.md.")
    return None


def network_problem(address: str | None, settings: LabSettings | None = None) -> str | None:
    """Why the lab must not serve on `address`, or None. Loopback is always fine; so is any address with a login
    configured ([auth] mode; the app checks its secret, auth_problem); else the operator's explicit opt-out."""
    if is_loopback(address) or network_opt_out(settings) or (settings is not None and settings.auth.login):
        return None
    shown = address or "every interface"
    return (f"This lab listens on {shown} without a login, so anyone who can reach the port could use it. "
            f"Serve it on 127.0.0.1 (the default in .streamlit/config.toml) and reach it through an SSH tunnel, or, "
            f"on a network you trust, opt out explicitly: {NETWORK_OPT_OUT_ENV_VAR}=1 in the server's environment "
            f"or allow_unauthenticated_network = true in the lab settings file, or serve a team with a login ([auth] "
            f"in the lab settings file). See docs/security.md.")

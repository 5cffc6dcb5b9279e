"""Kernels on a gateway ([gateway]): does the gateway answer?  Said by `jrd check`, at start, after a change.

With `GatewayClient.url` set, Jupyter Server sends every kernel and kernel spec
request to the gateway (Jupyter Kernel Gateway, Jupyter Enterprise Gateway)
and has no local kernel to fall back on: a gateway that does not answer means
kernels fail to start, never that they run on this machine.  jrd asks
`GET {url}/api/kernelspecs` with the token, as Jupyter would.  `jrd check`
refuses a gateway that does not answer.  The daemon does not: a gateway may
come up after it (a cluster that boots later), so `GatewayWatch` warns once,
probes again with backoff, and says when it answers.
"""

from __future__ import annotations

import logging
import ssl
import threading
import urllib.parse
from typing import Callable

from jrd import probe
from jrd.backoff import backoff_delay
from jrd.config import Config, GatewayConfig, gateway_token
from jrd.errors import ConfigError, PreflightError
from jrd.extension import Context, Extension

log = logging.getLogger("jrd")

PROBE_TIMEOUT = 5.0
RETRY_FIRST = 5.0
RETRY_MAX = 300.0

Probe = Callable[[GatewayConfig, str], "str | None"]


def probe_gateway(gw: GatewayConfig, token: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None if the gateway lists its kernel specs for `token`; else why not, a phrase after "the gateway"."""
    parts = urllib.parse.urlsplit(gw.url)
    tls = parts.scheme == "https"
    path = parts.path + "/api/kernelspecs"
    # Verified as Jupyter verifies it (GatewayClient.validate_cert): the token must not go to an impostor.
    context = ssl.create_default_context() if tls else None
    result = probe.get(parts.hostname or "", parts.port or (443 if tls else 80), path, tls=tls, timeout=timeout,
                       host_header=parts.netloc, token=token or None, context=context)
    if result.status in (401, 403):
        if token:
            return f"refuses the token (HTTP {result.status}); put the gateway's current token in auth_token_file"
        return f"asks for a token (HTTP {result.status}); set auth_token_file"
    if result.status == 0:
        return f"does not answer ({result.error})"
    if not result.ok:
        return f"answers HTTP {result.status} to GET {path}"
    try:
        if "kernelspecs" in result.json():
            return None
    except (ValueError, TypeError):
        pass
    return f"answers GET {path}, but not as a Jupyter gateway (no kernel specs)"


def check_reachable(config: Config, probe_fn: Probe = probe_gateway) -> None:
    """What `jrd check` adds for [gateway]: a gateway that does not answer is an error."""
    gw = config.gateway
    if not gw.enabled:
        return
    where = str(config.source or "the config")
    why = probe_fn(gw, gateway_token(where, gw))
    if why is not None:
        raise PreflightError(
            f"{where}: [gateway] url = '{gw.url}': the gateway {why}; Jupyter runs no kernel here while a gateway "
            "is set, so start the gateway or correct the url"
        )


class GatewayWatch(Extension):
    """Logs whether the gateway answers, at start and after a reload that changes [gateway]; until it answers,
    probes again with backoff (in a thread of its own, which only logs)."""

    def __init__(self, *, probe_fn: Probe = probe_gateway, first: float = RETRY_FIRST, cap: float = RETRY_MAX):
        self._probe = probe_fn
        self._first = first
        self._cap = cap
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._generation = 0

    def start(self, ctx: Context) -> None:
        self._follow(ctx.config)

    def config_changed(self, old: Config, new: Config) -> None:
        if new.gateway != old.gateway:
            self._follow(new)

    def stop(self) -> None:
        self._stop.set()

    def _follow(self, config: Config) -> None:
        """Forget the probes of an earlier [gateway]; start probing this one, if it is on."""
        with self._lock:
            self._generation += 1
            generation = self._generation
        if config.gateway.enabled:
            threading.Thread(target=self.watch, args=(config, generation), name="jrd-gateway", daemon=True).start()

    def _current(self, generation: int) -> bool:
        with self._lock:
            return generation == self._generation and not self._stop.is_set()

    def watch(self, config: Config, generation: int) -> None:
        """Probe until the gateway answers, or [gateway] changes, or jrd stops."""
        gw = config.gateway
        failures = 0
        while self._current(generation):
            try:
                why = self._probe(gw, gateway_token(str(config.source or "the config"), gw))
            except ConfigError as exc:  # the token file went away since the config was loaded
                why = f"cannot be asked: {exc}"
            if not self._current(generation):
                return
            if why is None:
                if failures:
                    log.info("the gateway at %s answers now: kernels start there", gw.url)
                else:
                    log.info("kernels run on the gateway at %s (it answers)", gw.url)
                return
            failures += 1
            delay = backoff_delay(failures, self._first, self._cap)
            if failures == 1:
                log.warning("the gateway at %s %s: no kernel can start until it answers (Jupyter never runs one on "
                            "this machine while [gateway] url is set); jrd asks again every %.0f s at most",
                            gw.url, why, self._cap)
            else:
                log.debug("the gateway at %s still %s; next try in %.0f s", gw.url, why, delay)
            self._stop.wait(delay)

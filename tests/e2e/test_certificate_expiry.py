"""smtprelay_tls_certificate_expiry_timestamp_seconds: what deploy/prometheus's
SmtprelayCertificateExpiresSoon alert reads, from /metrics of a running daemon."""

from __future__ import annotations

import datetime
import signal
import urllib.request
from pathlib import Path

from tests.certificates import certificate
from tests.support import DaemonProcess, free_port, samples, tls

METRIC = "smtprelay_tls_certificate_expiry_timestamp_seconds"
FIRST = datetime.datetime(2031, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
RENEWED = datetime.datetime(2031, 4, 2, 3, 4, 5, tzinfo=datetime.UTC)
TRACKING = datetime.datetime(2030, 6, 7, 8, 9, 10, tzinfo=datetime.UTC)


def expiries(daemon: DaemonProcess) -> dict[str, float]:
    """The metric's samples by their `certificate` label, every label checked."""
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.ports['http']}/metrics",
                                timeout=10) as response:
        found = samples(response.read().decode())
    result: dict[str, float] = {}
    for (name, labels), value in found.items():
        if name == METRIC:
            # One series per certificate: no process="workers" copy beside it.
            assert [key for key, _ in labels] == ["certificate"], labels
            result[dict(labels)["certificate"]] = value
    return result


def test_the_certificates_in_use_are_on_metrics_and_a_reload_updates_them(
        tmp_path: Path) -> None:
    cert, key = certificate(tmp_path / "relay", "relay.test", FIRST)
    links_cert, links_key = certificate(tmp_path / "links", "links.test", TRACKING)
    daemon = DaemonProcess(
        tmp_path, tls=tls(cert, key), server={"workers": 2, "transform_workers": 0},
        http={"tls_listen": [f"127.0.0.1:{free_port()}"]},
        tracking_domains={"links.test": {"cert_file": str(links_cert),
                                         "key_file": str(links_key)}}).start()
    try:
        # Both workers hold the certificate too; neither may add a series of its own.
        # (And a SIGHUP before a worker has its handlers would end it.)
        daemon.wait_log("worker 1 listening", timeout=30)
        daemon.wait_log("worker 0 listening", timeout=30)
        assert expiries(daemon) == {
            "tls.cert_file": FIRST.timestamp(),
            "tracking_domains.links.test.cert_file": TRACKING.timestamp()}
        renewed_cert, renewed_key = certificate(tmp_path / "renewed", "relay.test", RENEWED)
        key.write_bytes(renewed_key.read_bytes())
        cert.write_bytes(renewed_cert.read_bytes())
        daemon.proc.send_signal(signal.SIGHUP)
        daemon.wait_log("tls certificate reloaded")
        assert expiries(daemon)["tls.cert_file"] == RENEWED.timestamp()
    finally:
        assert daemon.stop() == 0

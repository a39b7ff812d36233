"""The command line behaves like a Unix tool: bad input exits 2 saying what is valid, text
listings have a header and French dates, filters and limits compose, and a reader that goes
away (``| head``) ends the command quietly. Driven through ``python -m mailgateway`` on SQLite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mailgateway.intake.smtp import too_big
from tests.support.gateway import PROJECT_ROOT, GatewayConfig, declaration

FRENCH_INSTANT = re.compile(r"\d\d/\d\d/\d{4} à \d\d:\d\d")
ISO_INSTANT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> GatewayConfig:
    """Three declarations ingested: three cases, their acknowledgements and notifications queued."""
    config = GatewayConfig(tmp_path_factory.mktemp("cli") / "gw")
    files = []
    for n in range(3):
        path = config.directory / f"decl-{n}.eml"
        path.write_bytes(declaration(f"decl-{n}@chu-nantes.test"))
        files.append(str(path))
    config.cli("ingest", *files)
    return config


def test_unreadable_inputs_each_get_a_line_and_the_readable_ones_are_still_done(config: GatewayConfig) -> None:
    """Design §5: exit 2 with a one-line reason per problem. An outside tester: ``parse --json
    ok.eml missing dir missing2`` printed nothing for ok.eml and named the first problem only."""
    ok = config.directory / "decl-0.eml"
    missing = config.directory / "absent.eml"
    proc = config.cli("parse", "--json", str(ok), str(missing), str(config.directory), str(ok), check=False)
    assert proc.returncode == 2
    assert [json.loads(line)["file"] for line in proc.stdout.splitlines()] == [str(ok), str(ok)]
    assert proc.stderr.splitlines() == [f"erreur : {missing}: lecture impossible (No such file or directory)",
                                        f"erreur : {config.directory}: lecture impossible (Is a directory)"]
    proc = config.cli("ingest", "--json", str(missing), str(ok), check=False)
    assert proc.returncode == 2
    assert [json.loads(line)["file"] for line in proc.stdout.splitlines()] == [str(ok)]
    assert proc.stderr.splitlines() == [f"erreur : {missing}: lecture impossible (No such file or directory)"]


def test_read_commands_refuse_a_database_that_does_not_exist(tmp_path: Path) -> None:
    """An outside tester (ops): at a mistyped path, « cases verify » created an empty database and
    said « chaîne d'audit intacte (0 dossier(s)) »; a check after a restore could pass on the
    wrong file. Exit 2 naming the file, and nothing created."""
    config = GatewayConfig(tmp_path / "gw")
    assert not config.db_path.exists()
    for command in (["cases", "list"], ["cases", "verify"], ["outbox", "list"], ["quarantine", "list"]):
        proc = config.cli(*command, check=False)
        assert proc.returncode == 2, command
        assert proc.stderr.splitlines() == [f"erreur : base de données absente : {config.db_path} (vérifiez "
                                            "[database] url ; « mailgateway db upgrade » ou le démon la créent)"]
    for command in (["scheduler", "run-due"], ["bulletin", "list"]):  # a timer at a mistyped path
        assert config.cli(*command, check=False).returncode == 2, command
    assert not config.db_path.exists()
    config.cli("db", "upgrade")
    assert config.cli("cases", "verify").returncode == 0


def test_a_configuration_file_that_cannot_be_read_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A Latin-1 file, a directory: tracebacks and exit 1 (outside tester)."""
    latin = tmp_path / "latin1.toml"
    latin.write_bytes('[database]\nurl = "sqlite:///é.db"\n'.encode("latin-1"))
    for path, words in ((latin, "not UTF-8"), (tmp_path, "unreadable")):
        proc = subprocess.run([sys.executable, "-m", "mailgateway", "-c", str(path), "check-config"],
                              capture_output=True, text=True, cwd=PROJECT_ROOT)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def test_an_output_file_that_cannot_be_written_is_one_line_and_exit_2(config: GatewayConfig, tmp_path: Path) -> None:
    ref = json.loads(config.cli("cases", "list", "--json").stdout)[0]["reference"]
    for out in (tmp_path / "absent" / "x.eml", tmp_path):
        proc = config.cli("cases", "original", ref, "--out", str(out), check=False)
        assert proc.returncode == 2 and proc.stderr.startswith(f"erreur : {out} : écriture impossible (")
        assert len(proc.stderr.splitlines()) == 1


def test_check_config_says_which_database_file_it_resolves_to(config: GatewayConfig) -> None:
    assert f"base de données SQLite : {config.db_path}" in config.cli("check-config").stdout


def test_an_unknown_region_exits_2_as_an_unknown_status_does(config: GatewayConfig) -> None:
    proc = config.cli("cases", "list", "--region", "ZZZ", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["erreur : --region : région inconnue « ZZZ » (régions configurées : PDL, ARA)"]
    assert config.cli("cases", "list", "--region", "pdl").returncode == 0


def test_check_config_says_every_problem_once(tmp_path: Path) -> None:
    """An outside tester: file checks ended the run, hiding the rest; a port of the wrong type
    gave two lines; a metrics port equal to the SMTP port passed, then run failed."""
    config = GatewayConfig(tmp_path / "gw")
    config.key_file.unlink()
    text = config.path.read_text(encoding="utf-8").replace("port = ", "port = 'x' # ", 1)
    config.path.write_text(text, encoding="utf-8")
    proc = config.cli("check-config", check=False)
    assert proc.returncode == 2
    assert [line.split(":")[0] for line in proc.stderr.splitlines()] == [
        "intake.smtp.port", "dkim.keys[0].private_key_file"], proc.stderr
    config.write()
    config.path.write_text(config.path.read_text(encoding="utf-8")
                           + f'[metrics]\nhost = "127.0.0.1"\nport = {config.smtp_port}\n', encoding="utf-8")
    proc = config.cli("check-config", check=False)
    assert proc.returncode == 2
    assert sorted(line.split(":")[0] for line in proc.stderr.splitlines()) == [
        "dkim.keys[0].private_key_file", "metrics.port"], proc.stderr


def test_an_unknown_case_status_exits_2_listing_the_valid_ones(config: GatewayConfig) -> None:
    proc = config.cli("cases", "list", "--status", "ouvertissime", check=False)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "ouvertissime" in proc.stderr and "PRIS_EN_COMPTE" in proc.stderr and "CLOS" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cases_list_has_a_header_french_labels_and_french_dates(config: GatewayConfig) -> None:
    lines = config.cli("cases", "list").stdout.splitlines()
    assert lines[0].split()[:3] == ["RÉFÉRENCE", "STATUT", "GRAVITÉ"], lines[0]
    assert len(lines) == 4
    for line in lines[1:]:
        assert line.startswith("SSI-PDL-")
        assert "pris en compte" in line and "non qualifié" in line
        assert len(FRENCH_INSTANT.findall(line)) == 2, line
        assert not ISO_INSTANT.search(line) and "PRIS_EN_COMPTE" not in line


def test_a_status_may_be_given_by_its_french_label(config: GatewayConfig) -> None:
    assert len(config.cli_json("cases", "list", "--status", "pris en compte")) == 3
    assert len(config.cli_json("cases", "list", "--status", "clos")) == 0


def test_cases_show_tells_the_story_in_french(config: GatewayConfig) -> None:
    ref = config.cli_json("cases", "list")[0]["reference"]
    text = config.cli("cases", "show", ref).stdout
    story = text.split("chronologie :\n", 1)[1].splitlines()
    assert story and all(FRENCH_INSTANT.match(line.strip()) for line in story), story
    assert any("Statut : reçu → pris en compte" in line for line in story)
    assert any("Accusé de réception envoyé à dsi@chu-nantes.test" in line for line in story)
    assert "mail_sortant" not in text and "statut —" not in text


def test_outbox_list_filters_by_status_and_limits(config: GatewayConfig) -> None:
    queued = config.cli_json("outbox", "list", "--status", "queued")
    assert len(queued) >= 3 and {r["status"] for r in queued} == {"queued"}
    assert config.cli_json("outbox", "list", "--status", "sent") == []
    assert len(config.cli_json("outbox", "list", "--status", "queued", "--limit", "2")) == 2
    lines = config.cli("outbox", "list", "--status", "queued", "--limit", "1").stdout.splitlines()
    assert lines[0].split()[:2] == ["ID", "ÉTAT"] and len(lines) == 2
    assert FRENCH_INSTANT.search(lines[1]), lines[1]
    assert "en file" in lines[1] and "queued" not in lines[1]  # French in the table, codes in --json
    bad = config.cli("outbox", "list", "--status", "perdu", check=False)
    assert bad.returncode == 2 and "queued" in bad.stderr and "Traceback" not in bad.stderr


def test_output_piped_to_head_ends_quietly(config: GatewayConfig) -> None:
    # ~1 KB of JSON per file: far more than a pipe holds, so the writer meets the closed pipe.
    files = [str(config.directory / "decl-0.eml")] * 400
    writer = subprocess.Popen([sys.executable, "-m", "mailgateway", "parse", "--json", *files, "-c", str(config.path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=PROJECT_ROOT)
    assert writer.stdout is not None and writer.stderr is not None
    head = subprocess.run(["head", "-n", "1"], stdin=writer.stdout, capture_output=True, timeout=120)
    writer.stdout.close()
    stderr = writer.stderr.read().decode()
    writer.stderr.close()
    code = writer.wait(timeout=120)
    assert json.loads(head.stdout)["kind"] == "declaration"
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert code == 141  # as a tool killed by SIGPIPE shows in the shell


def test_the_size_refusal_says_the_limit_in_ascii() -> None:
    text = too_big(26_214_400)
    assert text.startswith("552 5.3.4 ") and text.isascii() and len(text) <= 512
    assert "26214400 bytes" in text and "26 Mo" in text


def test_help_is_unchanged_for_the_new_filters(tmp_path: Path) -> None:
    config = GatewayConfig(tmp_path / "gw")
    assert "--status" in config.cli("outbox", "list", "--help").stdout
    assert "--state" in config.cli("bulletin", "status", "--help").stdout

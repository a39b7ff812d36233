from __future__ import annotations

from pathlib import Path

from sqlalchemy import insert
from sqlalchemy.orm import Session

from mailgateway.directory import (
    count_establishments,
    count_recipients,
    import_contacts,
    import_finess,
    parse_target,
    record_bounce,
    select_recipients,
)
from mailgateway.store.models import Contact
from tests.directory.conftest import DATA, NOW
from tests.support.finess import write_csv


def _add(session: Session, finess: str, address: str, role: str = "ssi", status: str = "active") -> None:
    session.execute(
        insert(Contact),
        [{"finess": finess, "address": address, "role": role, "status": status, "created_at": NOW, "updated_at": NOW}],
    )


def _setup(session: Session) -> None:
    import_finess(session, DATA / "finess-sample.csv", NOW)
    _add(session, "690781810", "ssi@chu-lyon.fr")  # HCL: ssi active
    _add(session, "690781810", "rssi@chu-lyon.fr", "rssi")
    _add(session, "690041132", "ssi@bioclinic.fr", status="bouncing")  # LBM: ssi bouncing -> rssi
    _add(session, "690041132", "rssi@bioclinic.fr", "rssi")
    _add(session, "690041132", "dsi@bioclinic.fr", "dsi")
    _add(session, "690011234", "ssi@ehpad.fr", status="disabled")  # EHPAD: only dsi left
    _add(session, "690011234", "dsi@ehpad.fr", "dsi")
    _add(session, "690011234", "direction@ehpad.fr", "direction")
    _add(session, "010005239", "direction@labo-ain.fr", "direction")  # direction is never a recipient
    _add(session, "710780263", "ssi@ch-macon.fr")  # BFC: other region


def test_one_row_per_establishment_with_ssi_then_rssi_then_dsi(session: Session) -> None:
    _setup(session)
    rows = list(select_recipients(session, "ARA", parse_target("all")))
    assert [(r.finess, r.address, r.role) for r in rows] == [
        ("690011234", "dsi@ehpad.fr", "dsi"),
        ("690041132", "rssi@bioclinic.fr", "rssi"),
        ("690781810", "ssi@chu-lyon.fr", "ssi"),
    ]
    assert count_recipients(session, "ARA", parse_target("all")) == 3


def test_targets_filter_by_category_and_departement_within_the_region(session: Session) -> None:
    _setup(session)
    lbm = list(select_recipients(session, "ARA", parse_target("category=LBM")))
    assert [r.finess for r in lbm] == ["690041132"]
    assert count_recipients(session, "ARA", parse_target("departement=01")) == 0
    assert count_establishments(session, "ARA", parse_target("departement=01")) == 4
    assert count_recipients(session, "ARA", parse_target("category=ESMS|LBM,departement=69")) == 2
    assert [r.address for r in select_recipients(session, "BFC", parse_target("all"))] == ["ssi@ch-macon.fr"]


def test_recipients_are_streamed_in_batches(session: Session) -> None:
    _setup(session)
    # Many less-preferred contacts of one establishment, across several fetch batches.
    session.execute(
        insert(Contact),
        [
            {"finess": "690781810", "address": f"x{i}@chu-lyon.fr", "role": "dsi", "created_at": NOW, "updated_at": NOW}
            for i in range(2500)
        ],
    )
    rows = select_recipients(session, "ARA", parse_target("all"), batch=100)
    assert next(rows).finess == "690011234"
    assert len(list(rows)) == 2  # the extra dsi contacts never duplicate an establishment


def test_contacts_import_selection_and_bounces_work_on_both_engines(any_session: Session, tmp_path: Path) -> None:
    import_finess(any_session, DATA / "finess-sample.csv", NOW)
    path = write_csv(
        tmp_path / "c.csv",
        "finess;name;category;departement;email;role\n690781810;;;;ssi@chu-lyon.fr;\n690781810;;;;dsi@chu-lyon.fr;dsi\n"
        "690999990;Nouveau centre;LBM;69;ssi@nouveau.fr;\n",
    )
    assert import_contacts(any_session, path, NOW).added == 3
    assert import_contacts(any_session, path, NOW).unchanged == 3
    record_bounce(any_session, "ssi@chu-lyon.fr", True, "550 5.1.1", NOW)
    record_bounce(any_session, "ssi@chu-lyon.fr", True, "550 5.1.1", NOW)  # a second refused message
    rows = [(r.finess, r.address) for r in select_recipients(any_session, "ARA", parse_target("all"))]
    assert rows == [("690781810", "dsi@chu-lyon.fr"), ("690999990", "ssi@nouveau.fr")]

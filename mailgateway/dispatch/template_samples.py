"""Sample contexts of templates that need more than ``samples.sample_context`` (check-config)."""

from __future__ import annotations

from typing import Any

_BULLETIN = {"id": 1, "subject": "Campagne d'hameçonnage en cours", "body": "Texte du bulletin.\nDeuxième ligne.",
             "tlp": "CLEAR", "target": "category=LBM", "status": "draft", "author": "agent@ars.example"}
_ESTABLISHMENT = {"name": "Laboratoire de biologie", "finess": "690000001", "category": "LBM", "departement": "69"}
_COUNTS = {"id": 1, "recipients": 2, "delivered": 1, "pending": 0, "bounced": 1, "acknowledged": 1, "refused": 0,
           "fallbacks": 1, "by_departement": {"69": {"recipients": 2, "delivered": 1, "acknowledged": 1}},
           "by_category": {"LBM": {"recipients": 2, "delivered": 1, "acknowledged": 1}}}

_DIGEST_ROW = {"case": {"reference": "SSI-ARA-2026-0001", "title": "Centre hospitalier — rançongiciel",
                        "status": "RECU", "severity": "NON_QUALIFIE", "establishment": "Centre hospitalier",
                        "assignee": None},
               "received_fr": "27/11/2026 à 08:30",
               "declaration": {"finess": "690781810", "structure": "Centre hospitalier",
                               "incident_type": "RANCONGICIEL", "severity": "GRAVE", "impacts": ["SOINS"]},
               "establishment": {"name": "Centre hospitalier", "departement": "69"}, "declarant": "dsi@chu-exemple.fr",
               "sender": {"address": "dsi@chu-exemple.fr", "authenticated": True, "domain": "chu-exemple.fr"},
               "detected_at_fr": None,
               "duplicate_of": "SSI-ARA-2026-0000", "duplicate_candidates": [], "out_of_region": None,
               "ej_sites": False, "ack_capped": None, "ack_refused": None, "unsigned_reply_to": None,
               "forwarded_author": None, "from_header": None, "envelope_from": None,
               "original_files": None, "indicators": 2, "summary": "Serveurs chiffrés.",
               "since": ["27/11 08:31 — statut : pris en compte"],
               "since_more": 0}

EXTRA: dict[str, dict[str, Any]] = {
    "afflux": {"cases": [_DIGEST_ROW, {**_DIGEST_ROW, "since": []}], "period_fr": "le 27/11/2026 entre 08:30 et 08:31",
               "overview": [{"label": "graves (déclarés ou retenus)", "count": 2, "numbers": ["0001", "0002"],
                             "more": 0}],
               "first_number": "0001", "last_number": "0002",
               "composed_fr": "27/11/2026 à 08:32", "digest_from": 100},
    "bulletin": {"bulletin": _BULLETIN, "establishment": _ESTABLISHMENT, "alert": None, "case": None},
    "alerte_relais": {"bulletin": _BULLETIN, "establishment": _ESTABLISHMENT,
                      "case": {"reference": "SSI-ARA-2026-0002"},
                      "alert": {"reference": "CERTFR-2026-ALE-001", "title": "Vulnérabilité", "tlp": "CLEAR",
                                "targets": ["LBM"], "cves": ["CVE-2026-0001"], "authentic": True}},
    "relance_bulletin": {"bulletin": _BULLETIN, "establishment": _ESTABLISHMENT, "alert": None,
                         "sent_at_fr": "27/11/2026 à 08:30"},
    "bulletin_apercu": {"stage": "apercu", "bulletin": _BULLETIN, "reason": None, "recipients": 2, "establishments": 3,
                        "sample": [{"name": "Laboratoire", "finess": "690000001", "address": "ssi@labo.example",
                                    "role": "ssi", "departement": "69", "category": "LBM"}],
                        "token": "0123456789ab", "expires_fr": "28/11/2026 à 08:30"},
    "bulletin_rapport": {"bulletin": _BULLETIN, "counts": _COUNTS, "approved_at_fr": "27/11/2026 à 08:30",
                         "targeted": 3, "no_contact": 1,
                         "without_ssi": [{"finess": "690000002", "name": "Labo 2", "departement": "69",
                                          "unreached": False, "role": "rssi", "address": "rssi@labo2.example"}]},
    "contact_a_corriger": {"address": "ssi@labo.example", "diagnostic": "550 5.1.1 user unknown",
                           "establishment": _ESTABLISHMENT, "fallback": "rssi@labo.example", "bulletin": _BULLETIN,
                           "case": None, "bounced_at_fr": "27/11/2026 à 08:30", "marked": True},
}

# Case handling by mail (commands/receipts.py, commands/handling.py).
_CASE_LINE = {"reference": "SSI-ARA-2026-0001", "kind": "incident", "status": "QUALIFIE", "severity": "GRAVE",
              "title": "Centre hospitalier — RANCONGICIEL", "establishment": "Centre hospitalier",
              "finess": "690781810", "assignee": "agent@ars.example", "declarant": "dsi@chu-exemple.fr", "tlp": None,
              "opened_fr": "27/11/2026 à 08:30", "updated_fr": "28/11/2026 à 10:00"}
EXTRA.update({
    "demande_info": {"message": "Quels postes sont touchés ?", "author": "agent@ars.example"},
    "reponse": {"message": "Merci, le dossier est suivi.", "author": "agent@ars.example"},
    "transmission_acss": {"comment": "Établissement de référence.", "author": "agent@ars.example",
                          "opened_fr": "27/11/2026 à 08:30", "detected_fr": "27/11/2026 à 08:30"},
    "digest_requete": {"query": "statut", "case": _CASE_LINE, "cases": [_CASE_LINE], "overdue_days": 7.0,
                       "generated_fr": "28/11/2026 à 10:00",
                       "timeline": [{"seq": 1, "at_fr": "27/11/2026 à 08:30", "type": "message_recu",
                                     "actor": "dsi@chu-exemple.fr",
                                     "what": "Message reçu (déclaration) : « Déclaration d'incident »",
                                     "line": "27/11/2026 à 08:30 — dsi@chu-exemple.fr — Message reçu (déclaration) : "
                                             "« Déclaration d'incident »"}]},
    "cloture_declarant": {"verified": True, "merged": False, "merged_into": None, "closed_fr": "28/11/2026 à 10:00"},
    "reponse_recue": {"reply_from": "dsi@chu-exemple.fr", "from_acss": False, "reopened": True, "linked_from": None},
})

# Budget warnings to staff (dispatch/mailer.py, docs/guarantees.md).
EXTRA["avertissement"] = {"motif": "budget global de réponses automatiques atteint (500 par heure)",
                          "details": ["SSI-ARA-2026-0001"]}

# ROUTING: #transferer (commands/transfer.py).
_TRANSFER = {"previous": "SSI-PDL-2026-0003", "source_region": "PDL", "source_name": "Pays de la Loire",
             "author": "agent@ars.example", "opened_fr": "27/11/2026 à 08:30", "duplicate_of": "SSI-ARA-2026-0002",
             "case": {"reference": "SSI-ARA-2026-0004", "kind": "incident", "status": "PRIS_EN_COMPTE",
                      "severity": "NON_QUALIFIE", "title": "Centre hospitalier — RANCONGICIEL",
                      "establishment": "Centre hospitalier", "finess": "690781810", "category": "ETABLISSEMENT_SANTE",
                      "incident_type": "RANCONGICIEL", "nature": "MALVEILLANT", "assignee": None,
                      "declarant": "dsi@chu-exemple.fr", "tlp": None}}
EXTRA["transfert_equipe"] = dict(_TRANSFER)
EXTRA["transfert_declarant"] = dict(_TRANSFER)

"""The outcome of a directory import, and its French rendering for staff (README, "Command line")."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class LineError:
    line: int  # 1-based physical line of the file; 0 for the file as a whole
    message: str  # French, for staff

    def __str__(self) -> str:
        return f"ligne {self.line} : {self.message}" if self.line else self.message


@dataclass
class ImportReport:
    """Counts and problems of one import.

    ``refused`` means nothing was written. Contacts and staff imports are all-or-nothing, so any
    error refuses them; a FINESS import writes its valid lines and lists the bad ones, and is
    refused only when the file does not look like an extraction at all.
    """

    kind: str
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    skipped: int = 0  # lines deliberately ignored (geolocalisation, blank lines)
    removed: int = 0
    reactivated: int = 0  # contacts listed as active again after refusals (contacts.py, ``statut``)
    absent: int = 0  # rows already in the directory that the file does not mention (kept)
    errors: list[LineError] = field(default_factory=list)
    warnings: list[LineError] = field(default_factory=list)
    refused: bool = False
    extracted_on: str | None = None  # date of the FINESS extraction, ISO 8601

    def error(self, line: int, message: str) -> None:
        self.errors.append(LineError(line, message))

    def warn(self, line: int, message: str) -> None:
        self.warnings.append(LineError(line, message))

    @property
    def exit_code(self) -> int:
        """README, "Command line": 0 when imported, 2 on bad input (refused)."""
        return 2 if self.refused else 0

    def to_text_fr(self, max_lines: int = 200) -> str:
        head = {"finess": "Import FINESS", "contacts": "Import des contacts", "staff": "Import des agents"}
        outcome = "REFUSÉ, rien n'a été enregistré" if self.refused else "effectué"
        lines = [f"{head.get(self.kind, 'Import')} : {outcome}"]
        if self.extracted_on:
            year, month, day = self.extracted_on.split("-")
            lines.append(f"Extraction du {day}/{month}/{year}")
        counts = (
            f"Ajoutés : {self.added}, modifiés : {self.changed}, inchangés : {self.unchanged}, "
            f"erreurs : {len(self.errors)}"
        )
        if self.skipped:
            counts += f", ignorés : {self.skipped}"
        if self.removed:
            counts += f", supprimés : {self.removed}"
        if self.reactivated:
            counts += f", réactivés : {self.reactivated}"
        lines.append(counts)
        if self.absent:
            lines.append(f"Absents du fichier (conservés) : {self.absent}")
        for title, items in (("", self.errors), ("Avertissement : ", self.warnings)):
            for item in items[:max_lines]:
                lines.append(f"{title}{item}")
            if len(items) > max_lines:
                lines.append(f"… et {len(items) - max_lines} autres")
        return "\n".join(lines)

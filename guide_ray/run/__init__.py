"""One identity run end to end, above the method: its output folder, resume, files, progress,
the frozen networks it shares with other identities, the identities CSV, and the LTU benchmark."""

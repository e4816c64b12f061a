"""Images: validating uploads (``images``), offline OCR (``ocr``) and reading receipt fields from
its text (``receipts``, ``parsing``)."""

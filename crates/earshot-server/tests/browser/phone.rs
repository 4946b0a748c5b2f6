//! Phones, as far as Chromium can show them.

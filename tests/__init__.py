"""The tests, grouped as the shipped packages are; repo-wide checks and the shared fixtures live here."""

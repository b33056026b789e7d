"""Static pieces of the dashboard (CSS and the refresh script), kept as Python strings
so they ship inside the package with no build step and no package-data setup."""

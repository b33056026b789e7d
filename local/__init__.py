"""The local stack: emulators, functions in functions-framework, and the GCP stand-in."""

"""Local gRPC stand-in for Cloud Build, Cloud Run v2 and Resource Manager IAM (see server.py)."""

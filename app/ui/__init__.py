"""The dashboard and the API reference, served by the API from files in the package."""

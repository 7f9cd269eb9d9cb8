"""The API's endpoints, one module per area; each endpoint declares its permission."""

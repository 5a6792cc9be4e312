"""Where results live: artifact store (models, arrays), Parquet tables, and locations
(local paths or pyarrow URIs).
"""

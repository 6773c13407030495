"""PostgreSQL storage: asyncpg and SQL live here and nowhere else."""

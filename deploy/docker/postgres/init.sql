-- Runs once, when the postgres volume is first created: MLflow gets a database of its own, beside the prediction log
-- (the default database, plantdx).
CREATE DATABASE mlflow OWNER plantdx;

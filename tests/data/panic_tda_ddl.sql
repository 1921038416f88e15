-- panic-tda's DDL on SQLite (SQLAlchemy create_all output), verbatim.
CREATE TABLE clusteringresult (
	id CHAR(32) NOT NULL, 
	created_at DATETIME NOT NULL, 
	embedding_model VARCHAR NOT NULL, 
	algorithm VARCHAR NOT NULL, 
	parameters JSON NOT NULL, 
	clusters JSON NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE experimentconfig (
	id CHAR(32) NOT NULL, 
	networks JSON NOT NULL, 
	seeds JSON NOT NULL, 
	prompts JSON NOT NULL, 
	embedding_models JSON NOT NULL, 
	max_length INTEGER NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	PRIMARY KEY (id)
);
CREATE TABLE run (
	id CHAR(32) NOT NULL, 
	network JSON NOT NULL, 
	seed INTEGER NOT NULL, 
	max_length INTEGER NOT NULL, 
	initial_prompt VARCHAR NOT NULL, 
	experiment_id CHAR(32), 
	PRIMARY KEY (id), 
	FOREIGN KEY(experiment_id) REFERENCES experimentconfig (id)
);
CREATE INDEX ix_run_experiment_id ON run (experiment_id);
CREATE TABLE invocation (
	id CHAR(32) NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	model VARCHAR NOT NULL, 
	type VARCHAR(5) NOT NULL, 
	seed INTEGER NOT NULL, 
	run_id CHAR(32) NOT NULL, 
	sequence_number INTEGER NOT NULL, 
	input_invocation_id CHAR(32), 
	output_text VARCHAR, 
	output_image_data BLOB, 
	PRIMARY KEY (id), 
	FOREIGN KEY(run_id) REFERENCES run (id), 
	FOREIGN KEY(input_invocation_id) REFERENCES invocation (id)
);
CREATE INDEX ix_invocation_run_id ON invocation (run_id);
CREATE INDEX ix_invocation_input_invocation_id ON invocation (input_invocation_id);
CREATE TABLE persistencediagram (
	id CHAR(32) NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	diagram_data BLOB, 
	run_id CHAR(32) NOT NULL, 
	embedding_model VARCHAR NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(run_id) REFERENCES run (id)
);
CREATE INDEX ix_persistencediagram_run_id ON persistencediagram (run_id);
CREATE TABLE embedding (
	id CHAR(32) NOT NULL, 
	started_at DATETIME, 
	completed_at DATETIME, 
	invocation_id CHAR(32) NOT NULL, 
	embedding_model VARCHAR NOT NULL, 
	vector BLOB, 
	PRIMARY KEY (id), 
	FOREIGN KEY(invocation_id) REFERENCES invocation (id)
);
CREATE INDEX ix_embedding_invocation_id ON embedding (invocation_id);
CREATE TABLE embeddingcluster (
	id CHAR(32) NOT NULL, 
	embedding_id CHAR(32) NOT NULL, 
	clustering_result_id CHAR(32) NOT NULL, 
	cluster_id INTEGER NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(embedding_id) REFERENCES embedding (id), 
	FOREIGN KEY(clustering_result_id) REFERENCES clusteringresult (id)
);
CREATE INDEX ix_embeddingcluster_embedding_id ON embeddingcluster (embedding_id);
CREATE INDEX ix_embeddingcluster_clustering_result_id ON embeddingcluster (clustering_result_id);

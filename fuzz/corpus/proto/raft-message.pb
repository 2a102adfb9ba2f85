
c1R{"vote":{"leader_id":{"term":2,"node_id":1},"committed":false},"last_log_id":null}
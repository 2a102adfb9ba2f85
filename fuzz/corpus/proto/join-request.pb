
gantry-join-v2.xgw-b127.0.0.1:7001"	
zonea( 0€€€€:/dev/ttyUSB0B0‚

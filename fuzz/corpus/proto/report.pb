
gw-aReadygw-z"
webgw-a"Running(02
webcloudB
dblocal
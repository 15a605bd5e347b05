import asyncio

from airflow_octopusx.hooks.octopusx import OctopusXHook
from airflow_octopusx.models import VideoRequest
from airflow_octopusx.sensors.octopusx import VideoTaskSensor


def test_probe(octopusx_conn, context):
    octopusx_conn.configure(generation_seconds=0.3)
    with OctopusXHook() as hook:
        v = hook.submit_video(VideoRequest.build(prompt="x"))
    s = VideoTaskSensor(task_id="s", video_id=v.id, poke_interval=0.1, timeout=5)
    print(s.poke(context))
    print("EXEC", s.execute(context))
    s2 = VideoTaskSensor(task_id="s2", video_id=v.id, poke_interval=0.1, timeout=5, deferrable=True)
    octopusx_conn.reset()
    octopusx_conn.configure(generation_seconds=0.3)
    with OctopusXHook() as hook:
        v = hook.submit_video(VideoRequest.build(prompt="x"))
    s2.video_id = v.id
    try:
        s2.execute(context)
    except BaseException as e:
        print(type(e), type(e).__mro__, vars(e))
        ev = None

        async def go():
            async for ev in e.trigger.run():
                return ev

        print(asyncio.run(go()))
